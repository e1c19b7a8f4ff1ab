"""Retry and backoff decisions: when a failed step is tried again, and when the campaign fails.

Cut from the orchestrator because these are policy, not steps: every blocking step runs
through :meth:`Retrying.blocking`, and the gate waits out expired metadata with
:meth:`Retrying.stale_delay`. The numbers (quick retries, the download backoff, the outage
patience) live here once, so the orchestrator only says what to do on "retry" or "give up".
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

from firmware_bundles.messages import FailureReason
from vehicle_agent.config import DownloadLimits
from vehicle_agent.errors import UpdateFailed
from vehicle_agent.gate import Blocker, ConsentOutdated, HeldAtDownload, Hold
from vehicle_agent.journal import CampaignRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

# Worth another try before reporting failed: the network, not the content, let us down.
RETRYABLE = frozenset({FailureReason.METADATA_FETCH_FAILED, FailureReason.DOWNLOAD_FAILED})


class Retrying:
    """One car's retry policy; ``sleep`` and ``monotonic`` are injected so tests and the simulator run on fake time."""

    def __init__(
        self,
        vin: str,
        limits: DownloadLimits,
        *,
        retries: int,
        retry_delay: float,
        rng: random.Random,
        sleep: Callable[[float], Any],
        monotonic: Callable[[], float],
    ) -> None:
        self._vin = vin
        self._limits = limits
        self._retries = retries
        self._retry_delay = retry_delay
        self._rng = rng
        self._sleep = sleep
        self._monotonic = monotonic

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a thread, retrying network failures, mapping surprises to internal_error."""
        started, waited, attempt = self._monotonic(), 0.0, 0
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except (HeldAtDownload, ConsentOutdated):
                raise
            except UpdateFailed as exc:
                # the time so far: the clock's, or at least what we slept (a test's clock may stand still)
                delay = self.retry_in(exc, attempt, max(self._monotonic() - started, waited))
                if delay is None:
                    raise
                log.info("%s: %s; retrying in %.1f s", self._vin, exc, delay)
            except Exception as exc:  # a disk error or a bug must fail the campaign, not the car
                log.exception("%s: unexpected error", self._vin)
                raise UpdateFailed(FailureReason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}") from exc
            await self._sleep(delay)
            waited += delay
            attempt += 1

    def retry_in(self, exc: UpdateFailed, attempt: int, elapsed: float) -> float | None:
        """Seconds until the next try, or None to give up.

        The repository's outage (``exc.transient``: a 5xx such as its database's 503, or no
        connection) is waited out: soon, then less often (the download backoff, jittered so
        a fleet does not come back in step) for up to ``outage_patience`` seconds. Any other
        network failure gets ``retries`` quick tries; everything else fails at once.
        """
        if exc.reason not in RETRYABLE:
            return None
        if not exc.transient:
            return self._retry_delay * 2**attempt if attempt < self._retries else None
        limits = self._limits
        ceiling = min(limits.backoff_max, limits.backoff_base * 2 ** min(attempt, 30))
        delay = ceiling * (0.5 + 0.5 * self._rng.random())
        return delay if elapsed + delay <= limits.outage_patience else None

    def stale_hold(self, record: CampaignRecord, exc: UpdateFailed) -> Hold | None:
        """Expired metadata is transient: a hold while fresh metadata may still come (None: fail now).

        The server re-signs what lapsed (the Image repository's timestamp and snapshot by its
        re-signer, a VIN's Director chain when the car asks for its timestamp), so the car asks
        again after a growing backoff, within the same attempt, for up to ``outage_patience``
        seconds of waiting in all; a mirror replaying frozen metadata never gets past python-tuf's
        expiry check, and once the patience is spent the campaign fails ``metadata_expired``.
        """
        if exc.reason is not FailureReason.METADATA_EXPIRED:
            return None
        tries = record.stale_tries + 1
        if sum(self.stale_delay(n) for n in range(1, tries + 1)) > self._limits.outage_patience:
            return None
        return Hold(Blocker.METADATA_EXPIRED, f"{exc.detail[:700]}; fetching fresh metadata (try {tries + 1})")

    def stale_delay(self, tries: int) -> float:
        """Seconds before the next fetch after ``tries`` fetches in a row found expired metadata."""
        limits = self._limits
        return float(min(limits.backoff_max, limits.backoff_base * 2 ** min(max(tries, 1), 30)))
