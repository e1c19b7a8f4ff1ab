"""Publishing campaign notices (and withdrawals) to cars, concurrently and in the background.

A notice is retained (QoS 1) on the car's campaign topic, so a car offline at
launch gets it when it connects. A withdrawal (the campaign was cancelled) is
retained on the same topic, so it replaces the notice: a car that connects later
learns of the cancel instead of the campaign. Delivery is recorded per (campaign,
VIN) and in the owner-notification log; whatever was not confirmed is published
again at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from firmware_bundles import topics
from firmware_bundles.messages import encode
from ota_server.clock import Clock
from ota_server.mqtt.publisher import Publisher
from ota_server.rollout.fleet import Encoded, Sendable
from ota_server.services import campaigns
from ota_server.services.campaigns import Outbound
from ota_server.services.owner_links import OwnerLinks

log = logging.getLogger(__name__)

RETRIES = 5
# A batch this large (a launch's, or a restart's unpublished notices) is prepared in a worker thread,
# ``SLICE`` notices at a time, and sent one batch at a time; a smaller one (a cancel's withdrawals, a
# tick's retries) goes at once, never behind it.
LARGE_BATCH = 500
SLICE = 2000


def _encoded(notices: Sequence[Sendable]) -> list[tuple[str, bytes]]:
    """Each message's topic and bytes: as encoded where it was made (a launch's notices), else now."""
    return [
        (topics.campaign_topic(notice.vin), notice.payload if isinstance(notice, Encoded) else encode(notice))
        for notice in notices
    ]


class NoticeDispatcher:
    def __init__(
        self, publisher: Publisher, session_factory: sessionmaker[Session], clock: Clock, *, concurrency: int = 100
    ) -> None:
        self._publisher = publisher
        self._factory = session_factory
        self._clock = clock
        self._concurrency = concurrency
        self._limit = asyncio.Semaphore(concurrency)  # the retries, across batches: at most this many in flight
        self._bulk = asyncio.Lock()  # one large batch at a time, each with its own window of ``concurrency``
        self._tasks: set[asyncio.Task[None]] = set()
        self.published = 0  # notices and withdrawals the broker took (the /metrics counter)

    @property
    def publisher(self) -> Publisher:
        return self._publisher

    def dispatch(self, notices: Sequence[Sendable]) -> None:
        """Start publishing ``notices`` (and withdrawals; those :class:`Encoded` as their bytes) in the
        background and return at once."""
        if not notices:
            return
        task = asyncio.create_task(self._publish_all(list(notices)), name="ota-notices")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_one(self, notice: Sendable, topic: str, payload: bytes) -> bool:
        """``notice`` (as ``topic`` and its encoded ``payload``) with retries and a growing delay."""
        delay = 0.5
        for attempt in range(1, RETRIES + 1):
            try:
                async with self._limit:
                    await self._publisher.publish(topic, payload, qos=topics.QOS, retain=True)
                self.published += 1
                return True
            except Exception as exc:  # any transport failure: retry, then leave it for the next start
                log.warning(
                    "notice to %s failed (attempt %d/%d): %s",
                    notice.vin,
                    attempt,
                    RETRIES,
                    exc,
                    extra={"campaign_id": notice.campaign_id, "vin": notice.vin},
                )
                if attempt < RETRIES:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        return False

    async def _handed_over(self, notices: list[Sendable]) -> tuple[list[tuple[str, bytes]], list[bool]]:
        """Each notice encoded, and whether the broker acknowledged it through the bulk path.

        A launch's notices come encoded (:class:`Encoded`): only their topics are made here, and the
        whole batch goes through one window. A large batch to encode (a restart's unpublished notices,
        ~0.6 s at 30,000, issue 19) is prepared a slice at a time in a worker thread, the next slice
        while the broker takes this one: the first notices leave once ``SLICE`` are ready, not once
        all are.
        """
        if len(notices) < LARGE_BATCH:
            small = _encoded(notices)
            return small, await self._publisher.publish_many(
                small, qos=topics.QOS, retain=True, in_flight=self._concurrency
            )
        if all(isinstance(notice, Encoded) for notice in notices):
            # Made encoded (a launch's): nothing to prepare but the topics, so one window over the whole
            # batch. Sent a slice at a time, each slice waited for its last acknowledgement before the next
            # left: 15 times at 30,000 cars the window emptied and the hub went idle (issue 19).
            async with self._bulk:
                ready = _encoded(notices)
                return ready, await self._publisher.publish_many(
                    ready, qos=topics.QOS, retain=True, in_flight=self._concurrency
                )
        starts = range(0, len(notices), SLICE)
        slices = [notices[start : start + SLICE] for start in starts]
        messages: list[tuple[str, bytes]] = []
        acked: list[bool] = []
        stalled = False  # a slice the broker did not take whole: the rest go to the retries, as one batch did
        async with self._bulk:
            encoding = asyncio.ensure_future(asyncio.to_thread(_encoded, slices[0]))
            for index in range(len(slices)):
                part = await encoding
                if index + 1 < len(slices):
                    encoding = asyncio.ensure_future(asyncio.to_thread(_encoded, slices[index + 1]))
                messages += part
                if stalled:
                    acked += [False] * len(part)
                    continue
                taken = await self._publisher.publish_many(
                    part, qos=topics.QOS, retain=True, in_flight=self._concurrency
                )
                acked += taken
                stalled = not all(taken)
        return messages, acked

    async def _publish_all(self, notices: list[Sendable]) -> None:
        # The whole batch through the publisher's bulk path first (see _handed_over), then whatever
        # the broker did not acknowledge one by one with retries, a few workers per batch (a launch
        # hands over thousands at once).
        started = time.monotonic()
        large = len(notices) >= LARGE_BATCH
        messages, acked = await self._handed_over(notices)
        done: list[Sendable] = []
        unacknowledged: list[tuple[Sendable, tuple[str, bytes]]] = []
        for notice, message, ok in zip(notices, messages, acked, strict=True):
            if ok:
                done.append(notice)
            else:
                unacknowledged.append((notice, message))
        self.published += len(done)
        pending = iter(unacknowledged)
        failed = 0

        async def worker() -> None:
            nonlocal failed
            for notice, (topic, payload) in pending:
                if await self._publish_one(notice, topic, payload):
                    done.append(notice)
                else:
                    failed += 1

        retried = len(unacknowledged)
        await asyncio.gather(*(worker() for _ in range(min(self._concurrency, retried))))
        log.log(
            logging.INFO if retried or large else logging.DEBUG,
            "%d of %d campaign messages published in %.2f s (%d retried one by one)",
            len(done),
            len(notices),
            time.monotonic() - started,
            retried,
        )
        if done:
            try:
                await asyncio.to_thread(self._mark, done)
            except Exception:  # the notices went out; only the bookkeeping failed
                log.exception("could not record %d published notices", len(done))
        if failed:
            log.error("%d campaign notices not published; they will be retried at the next start", failed)

    def _mark(self, done: list[Sendable]) -> None:
        """Record what the broker took (in a worker thread: a launch's messages are made here, from their bytes'
        templates, :class:`Encoded`)."""
        messages = [notice.message if isinstance(notice, Encoded) else notice for notice in done]
        with self._factory() as session:
            campaigns.mark_published(session, messages, self._clock())

    def _unpublished(self, repo_url: str, owner_links: OwnerLinks | None) -> list[Outbound]:
        with self._factory() as session:
            return campaigns.unpublished(session, repo_url, self._clock(), owner_links)

    async def resume(self, repo_url: str, owner_links: OwnerLinks | None = None) -> int:
        """Dispatch notices launched earlier but never confirmed published; return how many."""
        notices = await asyncio.to_thread(self._unpublished, repo_url, owner_links)
        self.dispatch(notices)
        return len(notices)

    async def idle(self) -> None:
        """Wait for every dispatched batch to finish (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, timeout_s: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle(), timeout_s)
        for task in list(self._tasks):
            task.cancel()
