"""A campaign's rollout plan (waves, gates, timeouts, retries, rate, windows) and its pure rules.

The plan is filed with the recall (``RecallCreate.rollout``) and stored as JSON; the
functions here decide from plain numbers and times, so the scheduler stays a thin loop
over the database and the rules are tested without one. Defaults behave like a plain
broadcast: one wave of every car, no rate limit, no windows, no error threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from ota_server.rollout.states import ERRORS, VinState

_IN = ConfigDict(extra="forbid")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r}") from exc


class Wave(BaseModel):
    """One step of the rollout: a number of cars (a canary) or a share of the population."""

    model_config = _IN
    cars: int | None = Field(default=None, ge=1, le=10_000_000, description="This many cars (e.g. a canary of 50)")
    percent: float | None = Field(default=None, gt=0, le=100, description="This share of the population, rounded up")

    @model_validator(mode="after")
    def _one_size(self) -> Wave:
        if (self.cars is None) == (self.percent is None):
            raise ValueError("a wave gives exactly one of cars or percent")
        return self


class Ramp(BaseModel):
    """AWS-IoT-style exponential ramp: start slow, multiply the rate as cars get notified."""

    model_config = _IN
    start_per_minute: int = Field(ge=1, le=1_000_000, description="Cars notified per minute at first")
    factor: float = Field(default=2.0, gt=1, le=10, description="Rate multiplier at each step")
    every_notified: int = Field(default=100, ge=1, description="Step up after this many more cars were notified")


class RateLimit(BaseModel):
    model_config = _IN
    per_minute: int = Field(ge=1, le=1_000_000, description="At most this many notices in any minute (the ceiling)")
    ramp: Ramp | None = Field(default=None, description="Optional exponential ramp up to per_minute")


class Window(BaseModel):
    """A maintenance window in each vehicle's local time; ``start`` after ``end`` crosses midnight."""

    model_config = _IN
    days: list[int] = Field(
        default_factory=lambda: list(range(7)), max_length=7, description="ISO weekdays as 0=Monday..6=Sunday"
    )
    start: time = Field(description="Local time the window opens, e.g. 01:00")
    end: time = Field(description="Local time the window closes, e.g. 05:00")

    @field_validator("days")
    @classmethod
    def _weekdays(cls, days: list[int]) -> list[int]:
        if not days or any(d < 0 or d > 6 for d in days):
            raise ValueError("days: give weekdays 0 (Monday) to 6 (Sunday)")
        return sorted(set(days))


class RolloutPlan(BaseModel):
    """How a campaign reaches its cars. Every threshold applies per wave."""

    model_config = _IN
    waves: list[Wave] = Field(
        default_factory=lambda: [Wave(percent=100)],
        min_length=1,
        max_length=50,
        description="In order; e.g. a canary of 50 cars, then 10%, then 100%. The last wave takes every car left",
    )
    success_threshold_percent: float = Field(
        default=90, ge=0, le=100, description="Share of a wave remedied over the air before the next wave opens"
    )
    error_threshold_count: int | None = Field(
        default=None, ge=1, description="Pause when this many cars of the open wave failed, rolled back or timed out"
    )
    error_threshold_percent: float | None = Field(
        default=None, gt=0, le=100, description="Pause when this share of the open wave failed/rolled back/timed out"
    )
    rollback_release_id: int | None = Field(
        default=None,
        ge=1,
        le=2**31 - 1,
        description="When the error threshold pauses the campaign, send this release to the cars of the tripped "
        "wave that already installed the fix (a rollback campaign: one wave, default plan, no second approval). "
        "Cars refuse a lower release counter, so this is the previous software re-released under a counter "
        "HIGHER than the recall's release, for the same hardware id, and published",
    )
    device_timeout_s: float | None = Field(
        default=3600, gt=0, description="A car installing with no report for this long is timed out (an error)"
    )
    ack_timeout_s: float | None = Field(
        default=None, gt=0, description="A car that never answers its notice for this long is timed out (off: wait)"
    )
    max_retries: int = Field(
        default=2, ge=0, le=20, description="New notices after a transient failure or timeout, per car"
    )
    retry_backoff_s: float = Field(default=300, ge=0, description="Wait before the first retry; doubles each time")
    retry_backoff_max_s: float = Field(default=6 * 3600, ge=0, description="Longest wait between retries")
    rate: RateLimit | None = Field(default=None, description="Cars notified per minute (off: as fast as possible)")
    start_at: AwareDatetime | None = Field(default=None, description="No car is notified before this instant")
    windows: list[Window] = Field(
        default_factory=list, max_length=20, description="Notify only inside one of these, in the car's local time"
    )
    default_time_zone: str = Field(
        default="UTC", max_length=64, description="IANA zone for cars registered without one"
    )

    @field_validator("default_time_zone")
    @classmethod
    def _zone(cls, name: str) -> str:
        zone(name)
        return name


# Failure reasons worth a new notice: the network or the car's moment, not the software.
TRANSIENT_REASONS = frozenset(
    {"metadata_fetch_failed", "download_failed", "download_too_slow", "insufficient_storage", "internal_error"}
)


def wave_sizes(population: int, waves: Sequence[Wave]) -> list[int]:
    """How many cars each wave holds; the last takes the rest, empty waves are dropped."""
    sizes: list[int] = []
    left = population
    for i, wave in enumerate(waves):
        if left <= 0:
            break
        if i == len(waves) - 1:
            size = left
        elif wave.cars is not None:
            size = min(wave.cars, left)
        else:
            size = min(math.ceil(population * (wave.percent or 0) / 100), left)
        sizes.append(size)
        left -= size
    return sizes or [0]


def allowance(rate: RateLimit | None, notified_total: int, notified_last_minute: int) -> int | None:
    """Notices allowed now (None: unlimited), given what went out in total and in the last minute."""
    if rate is None:
        return None
    ceiling = rate.per_minute
    if rate.ramp is not None:
        steps = notified_total // rate.ramp.every_notified
        ramped = rate.ramp.start_per_minute * rate.ramp.factor ** min(steps, 64)
        ceiling = min(ceiling, math.floor(ramped))
    return max(0, ceiling - notified_last_minute)


def in_window(windows: Sequence[Window], now: datetime, tz: ZoneInfo) -> bool:
    """Whether ``now`` falls in one of ``windows`` in zone ``tz`` (no windows: always)."""
    if not windows:
        return True
    local = now.astimezone(tz)
    clock, day = local.time().replace(tzinfo=None), local.weekday()
    for window in windows:
        if window.start <= window.end:
            if day in window.days and window.start <= clock < window.end:
                return True
        elif (day in window.days and clock >= window.start) or ((day - 1) % 7 in window.days and clock < window.end):
            return True  # crosses midnight: the evening of a listed day or the morning after it
    return False


def retry_delay(plan: RolloutPlan, retries_so_far: int) -> timedelta:
    return timedelta(seconds=min(plan.retry_backoff_s * 2**retries_so_far, plan.retry_backoff_max_s))


class GateStatus(StrEnum):
    WAITING = "waiting"  # not enough of the wave remedied yet
    PASSED = "passed"  # the next wave may open
    TRIPPED = "tripped"  # errors crossed the threshold: pause


@dataclass(frozen=True)
class Gate:
    status: GateStatus
    size: int
    remedied: int
    errors: int
    needed: int  # remedied cars the success threshold asks for

    def describe(self) -> str:
        return f"{self.remedied}/{self.size} remedied (needs {self.needed}), {self.errors} errors"


_EXCLUDED = frozenset(
    {VinState.REMEDIED_AT_DEALER, VinState.INSPECTED_NOT_NEEDED, VinState.UNREACHABLE, VinState.DECLINED}
)


def gate(plan: RolloutPlan, by_state: Mapping[str, int], error_baseline: int = 0) -> Gate:
    """Judge one wave from its counts per state. Errors first: a tripped wave never passes.

    Cars settled without the software (dealer, inspection, unreachable, declined) prove nothing
    about the release, so the success threshold applies to the others. ``error_baseline``
    is the errors an operator already saw when resuming after a pause.
    """
    size = sum(by_state.values())
    errors = sum(by_state.get(s.value, 0) for s in ERRORS)
    remedied = by_state.get(VinState.REMEDIED.value, 0)
    eligible = size - sum(by_state.get(s.value, 0) for s in _EXCLUDED)
    needed = math.ceil(eligible * plan.success_threshold_percent / 100)
    fresh = max(0, errors - error_baseline)
    tripped = fresh > 0 and (
        (plan.error_threshold_count is not None and fresh >= plan.error_threshold_count)
        or (plan.error_threshold_percent is not None and fresh * 100 >= plan.error_threshold_percent * size)
    )
    if tripped:
        status = GateStatus.TRIPPED
    elif remedied >= needed:
        status = GateStatus.PASSED
    else:
        status = GateStatus.WAITING
    return Gate(status, size, remedied, errors, needed)
