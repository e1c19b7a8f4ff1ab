"""A campaign's rollout plan (waves, gates, timeouts, retries, rate, windows) and its pure rules.

The plan is filed with the recall (``RecallCreate.rollout``) and stored as JSON; the
functions here decide from plain numbers and times, so the scheduler stays a thin loop
over the database and the rules are tested without one. Defaults behave like a plain
broadcast: one wave of every car, no rate limit, no windows, no error threshold.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ota_server.domain.states import ERRORS, VinState
from ota_server.domain.waves import wave_number

_IN = ConfigDict(extra="forbid")


# tzdata keys that name no place: the server machine's own zone (a car's windows must not move
# with the server), tzcode's template, and "Factory" (an unset zone, "-00").
_NOT_PLACES = frozenset({"localtime", "posixrules", "Factory"})


@functools.cache
def _zone_names() -> frozenset[str]:
    """The IANA keys this server knows (system tzdata and the tzdata package), read once."""
    return frozenset(available_timezones()) - _NOT_PLACES


def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` as stored (a car's, a plan's default); ValueError if it cannot be loaded.

    Used on stored names, so it does not re-judge them (see :data:`TimeZone` for what a person
    may send); a name that is a tzdata folder, such as ``Europe``, is a ValueError, not an OSError.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r}") from exc


def _time_zone(name: str, info: ValidationInfo) -> str:
    """A zone a person may send: a key tzdata lists as a zone, and loadable.

    A folder such as ``Europe`` made ``ZoneInfo`` raise IsADirectoryError (a 500), and
    ``localtime`` would follow the server machine's setting. Legacy IANA zones such as
    ``EST5EDT`` are real zones and accepted.
    """
    if not filing(info):
        return name
    if name not in _zone_names():
        raise ValueError(f"unknown IANA time zone {name!r}: give a zone such as Europe/Berlin, America/New_York or UTC")
    zone(name)
    return name


# One type for every time zone a person sends (vehicles, CSV import, the plan's default).
TimeZone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_time_zone)]

# Bounds on the plan's numbers: beyond them a plan only overflows the scheduler's arithmetic.
MAX_TIMEOUT_S = 30 * 24 * 3600  # a car silent for a month is not coming back on its own
MAX_BACKOFF_S = 7 * 24 * 3600
MAX_CARS = 10_000_000
# A plan's start: from shortly before filing (clocks differ) to a year ahead; outside, a typo.
START_AT_PAST = timedelta(days=1)
START_AT_AHEAD = timedelta(days=366)
# Validation context for plans read back from the database: the rules a plan must meet to be
# filed are not re-judged on plans filed before a rule existed (they stay readable).
STORED = {"stored": True}


def filing(info: ValidationInfo) -> bool:
    """False while reading a stored record (context :data:`STORED`): only new input is judged by new rules."""
    return not (isinstance(info.context, dict) and info.context.get("stored"))


class Wave(BaseModel):
    """One step of the rollout: a number of cars (a canary) or a share of the population."""

    model_config = _IN
    cars: int | None = Field(default=None, ge=1, le=MAX_CARS, description="This many cars (e.g. a canary of 50)")
    percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="This share of the population, rounded up; the last wave is 100 (every car left)",
    )

    @model_validator(mode="after")
    def _one_size(self) -> Wave:
        if (self.cars is None) == (self.percent is None):
            raise ValueError("a wave gives exactly one of cars or percent")
        return self


class Ramp(BaseModel):
    """AWS-IoT-style exponential ramp: start slow, multiply the rate as cars get notified."""

    model_config = _IN
    start_per_minute: int = Field(ge=1, le=1_000_000, description="Cars notified per minute at first")
    factor: float = Field(default=2.0, gt=1, le=10, allow_inf_nan=False, description="Rate multiplier at each step")
    every_notified: int = Field(
        default=100, ge=1, le=MAX_CARS, description="Step up after this many more cars were notified"
    )


# Which remedied cars a tripped wave rolls back (ota_server.rollout.rollback).
RollbackReach = Literal["wave", "campaign", "none"]


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
    start: time = Field(description="Local time the window opens, e.g. 01:00 (no UTC offset)")
    end: time = Field(description="Local time the window closes, e.g. 05:00 (no UTC offset; not equal to start)")

    @field_validator("days")
    @classmethod
    def _weekdays(cls, days: list[int]) -> list[int]:
        if not days or any(d < 0 or d > 6 for d in days):
            raise ValueError("days: give weekdays 0 (Monday) to 6 (Sunday)")
        return sorted(set(days))

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time, info: ValidationInfo) -> time:
        if value.tzinfo is not None and filing(info):
            raise ValueError(
                f"{value.isoformat()} has a UTC offset: windows are in each car's local time, give e.g. 01:00"
            )
        return value

    @model_validator(mode="after")
    def _not_empty(self, info: ValidationInfo) -> Window:
        if self.start == self.end and filing(info):
            raise ValueError(
                f"start and end are both {self.start.isoformat()}: a window needs two different times "
                "(leave windows out to notify at any hour)"
            )
        return self


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
        default=90,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Share of a wave remedied over the air before the next wave opens",
    )
    error_threshold_count: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CARS,
        description="Pause when this many cars of the open wave failed, rolled back or timed out",
    )
    error_threshold_percent: float | None = Field(
        default=None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        description="Pause when this share of the open wave failed/rolled back/timed out",
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
    rollback_reach: RollbackReach = Field(
        default="wave",
        description="Which remedied cars a tripped wave rolls back: 'wave' (the tripped wave's, the default), "
        "'campaign' (every remedied car of the campaign, earlier waves too) or 'none' (no rollback campaign; "
        "an operator may still start one by hand for the paused campaign). 'campaign' needs rollback_release_id",
    )
    device_timeout_s: float | None = Field(
        default=3600,
        gt=0,
        le=MAX_TIMEOUT_S,
        allow_inf_nan=False,
        description="A car installing with no report for this long is timed out (an error)",
    )
    ack_timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TIMEOUT_S,
        allow_inf_nan=False,
        description="A car that never answers its notice for this long is timed out (off: wait)",
    )
    max_retries: int = Field(
        default=2, ge=0, le=20, description="New notices after a transient failure or timeout, per car"
    )
    retry_backoff_s: float = Field(
        default=300, ge=0, le=MAX_BACKOFF_S, allow_inf_nan=False, description="Wait before the first retry; doubles"
    )
    retry_backoff_max_s: float = Field(
        default=6 * 3600, ge=0, le=MAX_BACKOFF_S, allow_inf_nan=False, description="Longest wait between retries"
    )
    rate: RateLimit | None = Field(default=None, description="Cars notified per minute (off: as fast as possible)")
    start_at: AwareDatetime | None = Field(
        default=None,
        description="No car is notified before this instant: from a day before filing to a year after",
    )
    windows: list[Window] = Field(
        default_factory=list, max_length=20, description="Notify only inside one of these, in the car's local time"
    )
    default_time_zone: TimeZone = Field(default="UTC", description="IANA zone for cars registered without one")

    @field_validator("start_at")
    @classmethod
    def _sane_year(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        # Checked before any arithmetic: year 1 or 9999 with an offset overflows datetime.
        if value is not None and not 2000 <= value.year <= 2100 and filing(info):
            raise ValueError(f"{value.isoformat()} is not a plausible start: give an instant from 2000 to 2100")
        return value

    @field_validator("waves")
    @classmethod
    def _waves_say_what_happens(cls, waves: list[Wave], info: ValidationInfo) -> list[Wave]:
        """The stored plan must be what runs: the last wave takes every car left, so it says 100%."""
        if not filing(info):
            return waves
        if waves[-1].percent != 100:
            raise ValueError(
                'the last wave takes every car left: give it as {"percent": 100} '
                '(e.g. [{"cars": 50}, {"percent": 10}, {"percent": 100}])'
            )
        shares = [(i, w.percent) for i, w in enumerate(waves[:-1]) if w.percent is not None]
        for (_, before), (index, share) in itertools.pairwise(shares):
            if share < before:
                raise ValueError(
                    f"wave {wave_number(index)} takes {share:g}%, less than the {before:g}% before it: waves grow"
                )
        if sum(share for _, share in shares) >= 100:
            raise ValueError("the waves before the last take 100% or more: the later waves would be empty")
        return waves

    @model_validator(mode="after")
    def _reach_has_a_release(self, info: ValidationInfo) -> RolloutPlan:
        if self.rollback_reach == "campaign" and self.rollback_release_id is None and filing(info):
            raise ValueError(
                "rollback_reach 'campaign' rolls every remedied car back to rollback_release_id: give that release"
            )
        return self

    @classmethod
    def stored(cls, data: object) -> RolloutPlan:
        """A plan as the database holds it (see :data:`STORED`)."""
        return cls.model_validate(data, context=STORED)


def not_started(plan: RolloutPlan, now: datetime) -> bool:
    """A scheduled rollout: ``plan.start_at`` is still ahead of ``now``, so no car is notified yet."""
    return plan.start_at is not None and now < plan.start_at


def start_problem(plan: RolloutPlan, now: datetime) -> str | None:
    """Why ``plan.start_at`` makes no sense when filed at ``now`` (long past or too far ahead), or None."""
    if plan.start_at is None:
        return None
    if plan.start_at < now - START_AT_PAST:
        return f"rollout.start_at {plan.start_at.isoformat()} is in the past: leave it out to start at launch"
    if plan.start_at > now + START_AT_AHEAD:
        return f"rollout.start_at {plan.start_at.isoformat()} is more than a year ahead: file the recall closer to it"
    return None


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


# The status reason of a campaign the error gate paused: the start of it names the cause for every
# reader (the webhook's campaign.threshold_tripped event, the pages); an operator's pause says "paused by".
THRESHOLD_REASON = "error threshold crossed"


def threshold_reason(wave: int, gate: Gate) -> str:
    """The status reason when ``gate`` trips in wave number ``wave`` (from 1)."""
    return f"{THRESHOLD_REASON} in wave {wave}: {gate.describe()}"


# The status reason of a campaign paused because its open wave can no longer pass (no car of it can change
# and too few are remedied) while a later wave waits behind it: only an operator can move it on.
MISSED_REASON = "success threshold missed"


def missed_words(wave: int, gate: Gate) -> str:
    """What a wave that can no longer pass its gate means, in words (``wave`` numbered from 1)."""
    return f"wave {wave} missed its success threshold ({gate.remedied} of {gate.needed} needed remedied)"


def missed_reason(wave: int, gate: Gate) -> str:
    """The status reason when wave number ``wave`` can no longer pass ``gate``."""
    return (
        f"{MISSED_REASON} in wave {wave}: {gate.remedied} of {gate.needed} needed remedied and no car of the wave "
        "can change; retry its failed cars or cancel the campaign"
    )


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
