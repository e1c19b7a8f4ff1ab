"""Leases: each periodic job runs on one replica at a time.

A lease is a row of ``leases`` (migration 0008): a job's name, its holder and until
when it holds it. :meth:`Lease.renew` takes the lease when it is free or expired and
extends it when we hold it, in one conditional ``UPDATE`` (an ``INSERT`` the first time),
so two replicas racing for it never both win: PostgreSQL serialises the two updates of
the row, SQLite the two write transactions. A holder that dies stops renewing and
another replica takes over once ``expires_at`` has passed. The same code runs on SQLite
(one server) and PostgreSQL (replicas); times come from the injected clock, so the
replicas' clocks must agree to well within the lease's lifetime (NTP does).

:class:`LeasedJob` runs a job every ``interval_s`` while it holds its lease, renewing it
every third of the lease's lifetime meanwhile, and at once when it has just taken the
lease over (a job that was due on a dead replica is not left waiting a whole interval).

A lease keeps two replicas from doing the same work twice; it is not what makes that
work correct. A holder paused past its lease (a long GC, a frozen VM) may still finish
a run while the next holder starts one, so the jobs stay safe to overlap: the scheduler
locks each campaign row while it judges it, ingest locks the cars' rows, re-signing
holds the Image repository's row locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy import case, insert, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.db.models import Lease as LeaseRow
from ota_server.infra.tasks import stop_task

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

SCHEDULER = "scheduler"
RESIGN = "resign"


def default_instance_id() -> str:
    """``<hostname>-<pid>-<random>``: unique per process, readable in the leases table."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Lease:
    """One named lease as seen by one holder (blocking; call from a worker thread)."""

    def __init__(
        self, sessions: sessionmaker[Session], name: str, holder: str, clock: Clock, ttl_s: float = 15.0
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("a lease needs a positive lifetime")
        self.name = name
        self.holder = holder
        self.ttl = timedelta(seconds=ttl_s)
        self._sessions = sessions
        self._clock = clock
        self._until: datetime | None = None  # our own idea of how long we hold it
        # A stopping job cancels its loop, but a renewal already running in a worker thread runs on:
        # renewals and the release take turns, and once released only reopen() lets renew take it again.
        self._turn = threading.Lock()
        self._released = False

    def now(self) -> datetime:
        return self._clock()

    @property
    def held(self) -> bool:
        """True while our last successful renewal has not run out (by our clock, no database)."""
        return self._until is not None and self._clock() < self._until

    def renew(self) -> bool:
        """Take the lease if it is free or expired, extend it if we hold it; True when we hold it now.

        False without asking the database once :meth:`release` has given it up (until :meth:`reopen`).
        """
        with self._turn:
            if self._released:
                return False
            return self._renew()

    def _renew(self) -> bool:
        now = self._clock()
        until = now + self.ttl
        try:
            with self._sessions() as session:
                mine = LeaseRow.holder == self.holder
                result = session.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == self.name, mine | (LeaseRow.expires_at <= now))
                    .values(
                        holder=self.holder,
                        expires_at=until,
                        acquired_at=case((mine, LeaseRow.acquired_at), else_=now),
                    )
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    session.commit()
                    taken_now = True
                else:
                    session.rollback()
                    taken_now = self._insert(session, now, until)
        except OperationalError:
            log.warning("lease %s: database unavailable; holding it only until it runs out", self.name)
            return self.held
        was = self.held
        self._until = until if taken_now else None
        if taken_now and not was:
            log.info("lease %s taken by %s", self.name, self.holder)
        elif was and not taken_now:
            log.warning("lease %s lost by %s", self.name, self.holder)
        return taken_now

    def _insert(self, session: Session, now: datetime, until: datetime) -> bool:
        """The first holder ever creates the row; a lost race (or a live holder) means not ours."""
        try:
            session.execute(
                insert(LeaseRow).values(name=self.name, holder=self.holder, expires_at=until, acquired_at=now)
            )
            session.commit()
        except IntegrityError:
            session.rollback()
            return False
        return True

    def release(self) -> None:
        """Give the lease up now (a graceful stop), so another replica need not wait for it to run out."""
        with self._turn:
            self._released = True
            self._release()

    def reopen(self) -> None:
        """Compete for the lease again after :meth:`release` (a job started again)."""
        with self._turn:
            self._released = False

    def _release(self) -> None:
        if self._until is None:
            return
        self._until = None
        try:
            with self._sessions() as session:
                session.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)
                    .values(expires_at=self._clock())
                )
                session.commit()
        except OperationalError:
            log.warning("lease %s: could not release it; it runs out by itself", self.name)


class LeasedJob:
    """Run ``job`` every ``interval_s`` on whichever replica holds ``lease``."""

    def __init__(
        self,
        lease: Lease,
        interval_s: float,
        job: Callable[[], Awaitable[object]],
        *,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.lease = lease
        self.interval = timedelta(seconds=interval_s)
        self._job = job
        self._sleep = sleep
        self._poll_s = min(interval_s, lease.ttl.total_seconds() / 3)
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Task[None] | None = None
        self._last_run: datetime | None = None
        self.runs = 0

    async def step(self) -> bool:
        """Renew the lease, start the job if it is due; True when a run was started."""
        had = self.lease.held
        holds = await asyncio.to_thread(self.lease.renew)
        if not holds:
            return False
        now = self.lease.now()
        if self._running is not None and not self._running.done():
            return False  # still at it: renewing meanwhile keeps the lease
        due = not had or self._last_run is None or now - self._last_run >= self.interval
        if not due:
            return False
        self._last_run = now
        self._running = asyncio.create_task(self._run_once(), name=f"ota-{self.lease.name}-job")
        return True

    async def _run_once(self) -> None:
        try:
            await self._job()
            self.runs += 1
        except Exception:  # a failed run must not end the job: the next one tries again
            log.exception("periodic job %s failed", self.lease.name)

    async def _loop(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("lease %s: renewal failed", self.lease.name)
            await self._sleep(self._poll_s)

    def start(self) -> None:
        if self._task is None:
            self.lease.reopen()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"ota-{self.lease.name}-lease")

    async def idle(self) -> None:
        """Wait for a run in progress to end."""
        if self._running is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        await self.idle()
        await asyncio.to_thread(self.lease.release)
