"""Per-key token buckets on an injected clock (the API keys them by token)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ota_server.clock import Clock
from ota_server.errors import RateLimited


class TokenBuckets:
    """Each key may spend ``burst`` requests at once, refilled at ``rate`` per second.

    ``rate <= 0`` switches limiting off. Thread-safe: API dependencies run in worker threads.
    With ``max_keys`` at most that many keys are remembered, the least recently used dropped
    first (a dropped key starts again with a full bucket), so keys an attacker can invent
    (client addresses, VINs in topics) cannot grow memory without limit.
    """

    def __init__(self, rate: float, burst: int, clock: Clock, *, max_keys: int | None = None) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def empty(self, key: object) -> bool:
        """True when ``key`` has no whole token left right now; spends nothing, moves nothing.

        For a gate that must be cheap and must not be spent by the message it looks at
        (ingest spends a car's tokens only once its report proved genuine).
        """
        tokens = self._tokens_now(key)
        return tokens is not None and tokens < 1.0

    def spent(self, key: object) -> bool:
        """True when ``key`` has used part of its bucket that has not refilled yet; spends nothing."""
        tokens = self._tokens_now(key)
        return tokens is not None and tokens < self.burst

    def _tokens_now(self, key: object) -> float | None:
        """``key``'s tokens now, refill included (uncapped); None when it is not limited or has no bucket."""
        if self.rate <= 0:
            return None
        with self._lock:
            held = self._buckets.get(key)
        if held is None:
            return None
        tokens, at = held
        return tokens + max(0.0, self._clock().timestamp() - at) * self.rate

    def wait_for(self, key: object, cost: float = 1.0) -> float:
        """Spend one request for ``key``: 0.0 when spent, else the seconds until one is there.

        A request worth ``cost`` tokens (ingest's report batch, one per step) goes through when the
        key holds one whole token, and may take the bucket below zero: a debt the refill pays off
        before the key's next request goes through. A cost above the burst is thus never refused
        for good, and still buys no more than the rate over time.
        """
        if self.rate <= 0:
            return 0.0
        now = self._clock().timestamp()
        with self._lock:
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - cost, now)
            while self._max_keys is not None and len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return 0.0

    def take(self, key: object) -> None:
        """Spend one request for ``key`` or raise :class:`RateLimited` saying when to retry."""
        wait = self.wait_for(key)
        if wait:
            raise RateLimited(f"rate limit of {self.rate:g} requests/s exceeded; retry in {wait:.2f}s", wait)
