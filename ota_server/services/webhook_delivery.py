"""Sending the outbox's events to the webhooks: a leased job (``webhooks``), one replica at a time.

Each run (:meth:`WebhookSender.run_once`):

1. fans out: each event not fanned out yet gets a delivery row (a new delivery id) for every
   webhook registered by the time it occurred whose filter wants it, in one transaction with the
   event's ``fanned_out`` mark; hourly, events and deliveries older than :data:`KEEP_DAYS`
   that are no longer pending are deleted;
2. claims the due deliveries of active webhooks (at most :data:`PER_WEBHOOK` per webhook a
   run, so one busy webhook cannot take a whole run): each claim is a conditional ``UPDATE``
   moving ``next_attempt_at`` past the attempt, so two overlapping runs never both send one;
3. POSTs them all at once (``httpx``, each bounded by ``timeout_s`` in total: a slow receiver
   delays nobody by more than that, and never the server's event loop), signed as
   ``docs/webhooks.md`` says;
4. records each result: 2xx delivered; a timeout, connection error, 408, 429 or 5xx is tried
   again after an exponential backoff with jitter, up to ``max_attempts``; any other status
   is failed at once. Each failure counts against the webhook; after ``pause_after_failures``
   failures in a row over at least ``min_failing_s`` (a receiver restarting for a minute is not
   dead), or failures for ``pause_after_s`` with no success, the webhook is paused
   (its deliveries wait, unsent) until an operator resumes it.

Delivery is at least once: a receiver that answered but whose answer was lost sees the same
delivery id again, and should ignore a delivery id it has seen.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ota_server.clock import Clock
from ota_server.db.models import OutboxEvent, Webhook, WebhookDelivery

log = logging.getLogger(__name__)

WEBHOOKS = "webhooks"  # the lease's name
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
FAN_OUT_BATCH = 500
PER_WEBHOOK = 32
CLAIM_BATCH = 200
BACKOFF_BASE_S = 10.0
BACKOFF_CAP_S = 3600.0
RETRYABLE_4XX = frozenset({408, 429})
MAX_ERROR = 500
KEEP_DAYS = 30  # how long sent or failed deliveries, and events fanned out, stay listed
PRUNE_EVERY = timedelta(hours=1)


def body_of(payload: dict[str, object]) -> bytes:
    """The request body: the event's payload as compact JSON."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff_s(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """The wait after the ``attempts``-th failed attempt: doubling from 10 s to an hour, half of it jitter."""
    full = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** max(0, attempts - 1))
    return full / 2 + rand() * full / 2


@dataclass(frozen=True)
class _Job:
    delivery_id: str
    webhook_id: int
    url: str
    secret: str
    event_type: str
    body: bytes


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def retryable(self) -> bool:
        code = self.status_code
        return code is None or code >= 500 or code in RETRYABLE_4XX


class WebhookSender:
    """Fans out the outbox and sends the due deliveries (see the module's doc)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Clock,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 8,
        pause_after_failures: int = 20,
        pause_after_s: float = 86400.0,
        min_failing_s: float = 900.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.pause_after_failures = pause_after_failures
        self.pause_after = timedelta(seconds=pause_after_s)
        # A busy campaign fails many deliveries a minute while a receiver restarts: the count pauses only
        # an endpoint that has also been failing this long.
        self.min_failing = timedelta(seconds=min_failing_s)
        self._transport = transport
        self._rand = rand
        self._pruned_at: datetime | None = None
        self._tls: ssl.SSLContext | None = None  # made once: loading the CA bundle takes ~0.1 s

    async def run_once(self) -> int:
        """One run: fan out, claim, send, record. Returns how many deliveries were attempted."""
        await asyncio.to_thread(self.fan_out)
        if self._pruned_at is None or self._clock() - self._pruned_at >= PRUNE_EVERY:
            await asyncio.to_thread(self.prune)
        jobs = await asyncio.to_thread(self._claim)
        if not jobs:
            return 0
        if self._tls is None:
            self._tls = await asyncio.to_thread(ssl.create_default_context)
        timeout = httpx.Timeout(self.timeout_s)
        async with httpx.AsyncClient(
            transport=self._transport, timeout=timeout, follow_redirects=False, verify=self._tls
        ) as client:
            outcomes = await asyncio.gather(*(self._send(client, job) for job in jobs))
        await asyncio.to_thread(self._record, list(zip(jobs, outcomes, strict=True)))
        return len(jobs)

    def fan_out(self) -> int:
        """A delivery row per (event not fanned out, webhook wanting it); the events marked. Blocking."""
        now = self._clock()
        with self._sessions() as session:
            events = session.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.fanned_out.is_(False))
                .order_by(OutboxEvent.id)
                .limit(FAN_OUT_BATCH)
            ).all()
            if not events:
                return 0
            hooks = session.scalars(select(Webhook)).all()
            made = 0
            for event in events:
                for hook in hooks:
                    wanted = hook.events is None or event.type in hook.events
                    if wanted and hook.created_at <= event.occurred_at:  # from its registration on
                        session.add(
                            WebhookDelivery(
                                id=str(uuid.uuid4()),
                                webhook_id=hook.id,
                                event_id=event.id,
                                status=PENDING,
                                attempts=0,
                                next_attempt_at=now,
                                created_at=now,
                            )
                        )
                        made += 1
                event.fanned_out = True
            try:
                session.commit()
            except IntegrityError:  # an overlapping run fanned these out first
                session.rollback()
                return 0
            return made

    def prune(self) -> int:
        """Delete deliveries done (sent or failed) and events fanned out more than KEEP_DAYS ago with
        nothing pending; how many events went. Blocking."""
        self._pruned_at = self._clock()
        before = self._pruned_at - timedelta(days=KEEP_DAYS)
        with self._sessions() as session:
            session.execute(
                delete(WebhookDelivery).where(WebhookDelivery.status != PENDING, WebhookDelivery.created_at < before)
            )
            pending = select(WebhookDelivery.event_id).where(WebhookDelivery.status == PENDING)
            gone = session.execute(
                delete(OutboxEvent).where(
                    OutboxEvent.fanned_out.is_(True), OutboxEvent.occurred_at < before, OutboxEvent.id.not_in(pending)
                )
            )
            session.commit()
            count: int = gone.rowcount  # type: ignore[attr-defined]
            return count

    def _claim(self) -> list[_Job]:
        """The due deliveries of active webhooks this run may send, each claimed by a conditional UPDATE."""
        now = self._clock()
        hold = now + timedelta(seconds=self.timeout_s + 60.0)  # past the attempt: an overlapping run skips it
        jobs: list[_Job] = []
        with self._sessions() as session:
            rows = session.execute(
                select(WebhookDelivery, Webhook, OutboxEvent)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
                .where(
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.next_attempt_at <= now,
                    Webhook.status == "active",
                )
                .order_by(WebhookDelivery.next_attempt_at, OutboxEvent.id)
                .limit(CLAIM_BATCH)
            ).all()
            per_hook: dict[int, int] = {}
            for delivery, hook, event in rows:
                if per_hook.get(hook.id, 0) >= PER_WEBHOOK:
                    continue
                claimed = session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery.id,
                        WebhookDelivery.status == PENDING,
                        WebhookDelivery.next_attempt_at == delivery.next_attempt_at,
                    )
                    .values(next_attempt_at=hold)
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                per_hook[hook.id] = per_hook.get(hook.id, 0) + 1
                jobs.append(_Job(delivery.id, hook.id, hook.url, hook.secret, event.type, body_of(event.payload)))
            session.commit()
        return jobs

    async def _send(self, client: httpx.AsyncClient, job: _Job) -> _Outcome:
        timestamp = str(int(self._clock().timestamp()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ota-server-webhooks",
            "X-OTA-Event": job.event_type,
            "X-OTA-Delivery": job.delivery_id,
            "X-OTA-Timestamp": timestamp,
            "X-OTA-Signature": signature(job.secret, timestamp, job.body),
        }
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await client.post(job.url, content=job.body, headers=headers)
        except TimeoutError:
            return _Outcome(None, f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return _Outcome(None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR] or type(exc).__name__)
        error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        return _Outcome(response.status_code, error)

    def _record(self, results: list[tuple[_Job, _Outcome]]) -> None:
        now = self._clock()
        with self._sessions() as session:
            for job, outcome in results:
                delivery = session.get(WebhookDelivery, job.delivery_id)
                hook = session.get(Webhook, job.webhook_id)
                if delivery is None or hook is None:
                    continue  # the webhook was removed meanwhile
                delivery.attempts += 1
                delivery.last_attempt_at, delivery.last_status_code = now, outcome.status_code
                delivery.last_error = outcome.error
                if outcome.delivered:
                    delivery.status, delivery.delivered_at, delivery.next_attempt_at = DELIVERED, now, None
                    hook.consecutive_failures, hook.failing_since = 0, None
                    continue
                if outcome.retryable and delivery.attempts < self.max_attempts:
                    delivery.next_attempt_at = now + timedelta(seconds=backoff_s(delivery.attempts, self._rand))
                else:
                    delivery.status, delivery.next_attempt_at = FAILED, None
                self._failed(hook, outcome, now)
            session.commit()

    def _failed(self, hook: Webhook, outcome: _Outcome, now: datetime) -> None:
        hook.consecutive_failures += 1
        if hook.failing_since is None:
            hook.failing_since = now
        if hook.status != "active":
            return
        failing_for = now - hook.failing_since
        if hook.consecutive_failures >= self.pause_after_failures and failing_for >= self.min_failing:
            why = f"{hook.consecutive_failures} failed deliveries in a row over {_duration(failing_for)}"
        elif failing_for >= self.pause_after:
            why = f"failing since {hook.failing_since.isoformat()}"
        else:
            return
        hook.status, hook.paused_reason = "paused", f"{why} (last: {outcome.error}); resume it to send again"
        log.warning("webhook %d paused: %s", hook.id, hook.paused_reason)


def _duration(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
