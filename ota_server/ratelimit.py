"""Per-key token buckets on an injected clock (the API keys them by token)."""

from __future__ import annotations

import threading

from ota_server.clock import Clock
from ota_server.errors import RateLimited


class TokenBuckets:
    """Each key may spend ``burst`` requests at once, refilled at ``rate`` per second.

    ``rate <= 0`` switches limiting off. Thread-safe: API dependencies run in worker threads.
    """

    def __init__(self, rate: float, burst: int, clock: Clock) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: object) -> None:
        """Spend one request for ``key`` or raise :class:`RateLimited` saying when to retry."""
        if self.rate <= 0:
            return
        now = self._clock().timestamp()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimited(f"rate limit of {self.rate:g} requests/s exceeded; retry in {wait:.2f}s", wait)
            self._buckets[key] = (tokens - 1.0, now)
