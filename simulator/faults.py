"""Failure injection for load and scenario runs: which cars fail, stay offline, defer, crawl,
lose power mid-install or join late.

A :class:`FaultPlan` picks exactly ``round(rate * cars)`` cars for each fault from one
RNG seeded with ``seed`` (the same plan and fleet size always pick the same positions),
so a scenario can say "3 of the 10 canary cars fail" without flaky bounds. The picks
are independent: a car may both defer and fail. (The three newer picks are drawn after
the first three, so adding them changed no existing pick.)

* fail: the car's health check of the new slot fails, so it rolls back and reports
  ``rolled_back`` (``health_check_failed``); ``fail_times`` limits it to the first N
  attempts (a retry then succeeds), ``None`` fails every attempt.
* offline: the car's agent starts (and connects) only ``offline_seconds`` after the
  others, or never when that is ``None``.
* defer: the car is not parked when the notice comes, so it reports ``deferred``
  (``not_parked``); ``defer_seconds`` after that deferral it parks and proceeds.
  The agent checks the notice's preconditions, or the defaults when it sends none.
* slow: the car's HTTP transport is throttled to ``slow_bytes_per_second`` (metadata,
  deltas and bundles alike; :class:`ThrottledTransport`). Below the agent's speed floor
  (``DownloadLimits.min_bytes_per_second``, 1 KiB/s) it fails ``download_too_slow``.
* power_cut: the power goes right after the car journals ``installing`` (the agent's
  task is cancelled at its next await, before it writes the slot); ``power_cut_seconds``
  later a NEW agent starts on the same state directory, resumes from the journal and
  finishes. Once per car.
* late: the car comes online only ``late_seconds`` after the campaign was launched
  (the runner is told of the launch); before that it has never connected.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

from firmware_bundles.assignment import Assignment
from vehicle_agent.health import HealthCheck
from vehicle_agent.installer import SlotBackend
from vehicle_agent.transport import Chunks, Transport

FAULTS = ("fail", "offline", "defer", "slow", "power_cut", "late")


@dataclass(frozen=True)
class CarFaults:
    fail: bool = False
    offline: bool = False
    defer: bool = False
    slow: bool = False
    power_cut: bool = False
    late: bool = False

    def names(self) -> list[str]:
        """The faults this car has, by name (how a worker process is told)."""
        return [name for name in FAULTS if getattr(self, name)]

    @classmethod
    def from_names(cls, names: Sequence[str]) -> CarFaults:
        unknown = set(names) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        return cls(**{name: True for name in names})


NO_FAULTS = CarFaults()


@dataclass(frozen=True)
class FaultPlan:
    fail_rate: float = 0.0
    offline_rate: float = 0.0
    defer_rate: float = 0.0
    seed: int | None = None
    fail_times: int | None = None
    offline_seconds: float | None = 30.0
    defer_seconds: float = 2.0
    slow_rate: float = 0.0
    slow_bytes_per_second: float = 8192.0
    power_cut_rate: float = 0.0
    power_cut_seconds: float = 1.0
    late_rate: float = 0.0
    late_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in FAULTS:
            rate = getattr(self, f"{name}_rate")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name}_rate must be between 0 and 1, got {rate}")
        if self.fail_times is not None and self.fail_times < 1:
            raise ValueError("fail_times must be at least 1 (or None: every attempt)")
        if (self.offline_seconds is not None and self.offline_seconds < 0) or self.defer_seconds < 0:
            raise ValueError("offline_seconds and defer_seconds must not be negative")
        if self.power_cut_seconds < 0 or self.late_seconds < 0:
            raise ValueError("power_cut_seconds and late_seconds must not be negative")
        if self.slow_bytes_per_second <= 0:
            raise ValueError("slow_bytes_per_second must be positive")

    @property
    def active(self) -> bool:
        return any(getattr(self, f"{name}_rate") for name in FAULTS)

    def assign(self, vins: Sequence[str]) -> dict[str, CarFaults]:
        """Each car's faults, by its position in ``vins``: exact counts, the same for the same seed."""
        rng = random.Random(self.seed)
        count = len(vins)
        picked = [set(rng.sample(range(count), round(getattr(self, f"{name}_rate") * count))) for name in FAULTS]
        return {vin: CarFaults(*(i in chosen for chosen in picked)) for i, vin in enumerate(vins)}

    def to_json(self) -> dict[str, float | int | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, float | int | None]) -> FaultPlan:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


class FaultyHealth:
    """Fails the first ``times`` health checks (all of them when ``times`` is None), then asks ``inner``."""

    def __init__(self, inner: HealthCheck, times: int | None = None) -> None:
        self._inner = inner
        self._left = times

    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        if self._left is None or self._left > 0:
            if self._left is not None:
                self._left -= 1
            return f"simulated fault: {expected.ecu_serial} did not come up healthy"
        return self._inner.check(slots, expected)


class ThrottledTransport:
    """A slow link: ``inner``'s bytes, at most ``bytes_per_second`` on average per request.

    The agent reads the network in worker threads, so the pacing sleeps (blocking) in
    the thread that reads; the simulator gives slow cars extra threads.
    """

    def __init__(
        self,
        inner: Transport,
        bytes_per_second: float,
        *,
        piece: int = 1024,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._rate = bytes_per_second
        self._piece = max(1, piece)
        self._sleep = sleep
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self.bytes = 0  # bytes that went through the slow link
        self.waited = 0.0  # seconds spent throttling

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        with self._inner.stream(url, start=start) as chunks:
            yield Chunks(self._paced(chunks), chunks.start)

    def _paced(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        began = self._monotonic()
        sent = 0
        for chunk in chunks:
            for i in range(0, len(chunk), self._piece):
                piece = chunk[i : i + self._piece]
                sent += len(piece)
                wait = began + sent / self._rate - self._monotonic()
                if wait > 0:
                    self._sleep(wait)
                with self._lock:
                    self.bytes += len(piece)
                    self.waited += max(wait, 0.0)
                yield piece
