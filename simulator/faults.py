"""Failure injection for load and scenario runs: which cars fail, stay offline, or defer.

A :class:`FaultPlan` picks exactly ``round(rate * cars)`` cars for each fault from one
RNG seeded with ``seed`` (the same plan and fleet size always pick the same positions),
so a scenario can say "3 of the 10 canary cars fail" without flaky bounds. The three
picks are independent: a car may both defer and fail.

* fail: the car's health check of the new slot fails, so it rolls back and reports
  ``rolled_back`` (``health_check_failed``); ``fail_times`` limits it to the first N
  attempts (a retry then succeeds), ``None`` fails every attempt.
* offline: the car's agent starts (and connects) only ``offline_seconds`` after the
  others, or never when that is ``None``.
* defer: the car is not parked when the notice comes, so it reports ``deferred``
  (``not_parked``); ``defer_seconds`` after that deferral it parks and proceeds.
  The agent checks the notice's preconditions, or the defaults when it sends none.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_bundles.assignment import Assignment
from vehicle_agent.health import HealthCheck
from vehicle_agent.installer import SlotBackend


@dataclass(frozen=True)
class CarFaults:
    fail: bool = False
    offline: bool = False
    defer: bool = False


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

    def __post_init__(self) -> None:
        for name in ("fail_rate", "offline_rate", "defer_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
        if self.fail_times is not None and self.fail_times < 1:
            raise ValueError("fail_times must be at least 1 (or None: every attempt)")
        if (self.offline_seconds is not None and self.offline_seconds < 0) or self.defer_seconds < 0:
            raise ValueError("offline_seconds and defer_seconds must not be negative")

    @property
    def active(self) -> bool:
        return bool(self.fail_rate or self.offline_rate or self.defer_rate)

    def assign(self, vins: Sequence[str]) -> dict[str, CarFaults]:
        """Each car's faults, by its position in ``vins``: exact counts, the same for the same seed."""
        rng = random.Random(self.seed)
        count = len(vins)
        fail, offline, defer = (
            set(rng.sample(range(count), round(rate * count)))
            for rate in (self.fail_rate, self.offline_rate, self.defer_rate)
        )
        return {vin: CarFaults(i in fail, i in offline, i in defer) for i, vin in enumerate(vins)}


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
