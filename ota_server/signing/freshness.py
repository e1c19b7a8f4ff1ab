"""Keeping the Image repository's timestamp and snapshot signed before they lapse.

A background task checks every ``interval`` seconds (and once at start, so a server
that was down for a week recovers at once) and re-signs what has less than half its
lifetime left. Time comes from the injected clock and the wait from an injected
sleep, so tests drive it in simulated time. The Director's per-VIN chains are
refreshed lazily when served (:meth:`signing.director.Director.refresh`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.infra.tasks import stop_task
from ota_server.signing.image_repo import ImageRepository

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class Refresher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        image_repo: ImageRepository,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._sessions = sessions
        self._image_repo = image_repo
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    def run_once(self) -> list[str]:
        """Re-sign what is due; return the names of the files re-signed (blocking)."""
        with self._sessions() as session, self._image_repo.lock:
            changed = self._image_repo.refresh(session, self._clock())
            session.commit()
        self.runs += 1
        if changed:
            log.info("re-signed Image repository %s before expiry", ", ".join(changed))
        return changed

    async def run(self, interval: float) -> None:
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:  # a database hiccup must not end the job: try again next round
                log.exception("re-signing the Image repository failed; retrying in %.0f s", interval)
            await self._sleep(interval)

    def start(self, interval: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(interval), name="ota-resign")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
