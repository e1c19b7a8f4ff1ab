"""Leases on a fake clock: one holder at a time, renewal, take-over after expiry, hand-over on stop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ota_server.db.migrate import upgrade
from ota_server.db.session import make_engine, make_session_factory
from ota_server.infra.leases import Lease, LeasedJob
from tests.ota_server.helpers import FakeClock


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    upgrade(engine)
    return engine


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def test_one_holder_at_a_time_and_takeover_after_expiry(sessions: sessionmaker[Session]) -> None:
    clock = FakeClock()
    a = Lease(sessions, "scheduler", "replica-a", clock, ttl_s=15)
    b = Lease(sessions, "scheduler", "replica-b", clock, ttl_s=15)
    assert a.renew() and a.held
    assert not b.renew() and not b.held
    clock.advance(10)
    assert a.renew()  # the holder extends it ...
    clock.advance(10)
    assert not b.renew()  # ... so 20 s after it was taken it is still a's
    # a dies: it stops renewing; b takes over only once a's lease has run out
    clock.advance(4.9)
    assert not b.renew()
    clock.advance(0.2)
    assert b.renew() and b.held
    assert not a.held  # a's own view runs out by its clock, without asking the database
    assert not a.renew()  # and a coming back does not take it back
    other = Lease(sessions, "resign", "replica-a", clock, ttl_s=15)
    assert other.renew()  # leases are per job


def test_release_hands_over_at_once(sessions: sessionmaker[Session]) -> None:
    clock = FakeClock()
    a = Lease(sessions, "resign", "replica-a", clock)
    b = Lease(sessions, "resign", "replica-b", clock)
    assert a.renew() and not b.renew()
    a.release()
    assert not a.held and b.renew()


def test_an_unreachable_database_keeps_the_lease_only_until_it_runs_out(tmp_path: Path, engine: Engine) -> None:
    clock = FakeClock()
    lease = Lease(make_session_factory(engine), "scheduler", "replica-a", clock, ttl_s=15)
    assert lease.renew()
    broken = Lease(
        make_session_factory(make_engine(f"sqlite:///{tmp_path / 'no-schema.db'}")),  # "no such table"
        "scheduler",
        "replica-a",
        clock,
        ttl_s=15,
    )
    broken._until = lease._until  # the same holder, now cut off from its database
    clock.advance(5)
    assert broken.renew()  # cannot renew, but still within the lease
    clock.advance(11)
    assert not broken.renew() and not broken.held


async def test_only_the_holder_runs_the_job_and_the_other_takes_over(sessions: sessionmaker[Session]) -> None:
    clock = FakeClock()
    runs: list[str] = []

    def job(name: str) -> LeasedJob:
        async def run() -> None:
            runs.append(name)

        return LeasedJob(Lease(sessions, "scheduler", name, clock, ttl_s=15), 10, run)

    a, b = job("a"), job("b")
    for _ in range(6):  # 30 s, a step every 5 s on each (renewal every third of the lease)
        assert await a.step() in (True, False)
        await b.step()
        await a.idle()
        await b.idle()
        clock.advance(5)
    assert runs == ["a", "a", "a"]  # at once, then every 10 s: at 0, 10 and 20 s
    runs.clear()
    # a dies (no more steps): b takes over once a's lease has run out, and runs at once
    for _ in range(4):
        await b.step()
        await b.idle()
        clock.advance(5)
    assert runs and set(runs) == {"b"}
    assert b.lease.held and not a.lease.held


async def test_stop_releases_the_lease(sessions: sessionmaker[Session]) -> None:
    clock = FakeClock()
    ran = asyncio.Event()

    async def run() -> None:
        ran.set()

    job = LeasedJob(Lease(sessions, "resign", "replica-a", clock), 600, run, sleep=lambda _s: asyncio.sleep(0))
    job.start()
    await asyncio.wait_for(ran.wait(), 10)
    await job.stop()
    assert Lease(sessions, "resign", "replica-b", clock).renew()


def test_a_renewal_still_running_when_the_lease_is_released_does_not_take_it_back(
    sessions: sessionmaker[Session],
) -> None:
    """A stopping job cancels its loop, but a renewal already handed to a worker thread runs on;
    if it lands after the release, the replica would hold the lease it just gave up (seen under
    load: the next holder waited a whole lifetime). Release and renewal must not interleave, and
    a released lease is not taken again by a late renewal."""
    clock = FakeClock()
    a = Lease(sessions, "resign", "replica-a", clock)
    assert a.renew()
    entered, go_on = threading.Event(), threading.Event()

    def slow_sessions() -> Session:
        entered.set()
        go_on.wait(10)
        return sessions()

    a._sessions = slow_sessions  # type: ignore[assignment]  # the renewal stalls before touching the row
    renewal = threading.Thread(target=a.renew)
    renewal.start()
    assert entered.wait(10)
    a._sessions = sessions
    release = threading.Thread(target=a.release)
    release.start()
    release.join(0.5)  # without the fix the release finishes here, before the stalled renewal
    go_on.set()
    renewal.join(10)
    release.join(10)
    assert not a.held
    assert Lease(sessions, "resign", "replica-b", clock).renew()


def test_a_renewal_that_starts_after_the_release_does_not_take_the_lease(sessions: sessionmaker[Session]) -> None:
    clock = FakeClock()
    a = Lease(sessions, "resign", "replica-a", clock)
    assert a.renew()
    a.release()
    assert not a.renew() and not a.held  # a queued renewal of a stopped job
    assert Lease(sessions, "resign", "replica-b", clock).renew()
    a.reopen()  # the job started again: it competes as before
    assert not a.renew()
