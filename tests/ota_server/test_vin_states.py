"""Property tests of the per-VIN state machine and the rollout rules (pure, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ota_server.domain import rollout_plan as rules
from ota_server.domain.states import (
    CAR_STATES,
    INSTALLING,
    NOT_STARTED,
    SUCCESS,
    Cause,
    IllegalTransition,
    VinState,
    allowed,
    check,
    counts,
)

STATES = st.sampled_from(list(VinState))
CAUSES = st.sampled_from(list(Cause))


@given(st.lists(st.tuples(st.integers(0, 19), STATES, CAUSES, st.booleans()), max_size=300))
@settings(max_examples=300)
def test_random_moves_never_break_the_rules_and_counts_equal_the_population(
    moves: list[tuple[int, VinState, Cause, bool]],
) -> None:
    fleet = [VinState.PENDING] * 20
    for car, dst, cause, new_attempt in moves:
        src = fleet[car]
        try:
            check(src, dst, cause, new_attempt=new_attempt)
        except IllegalTransition:
            assert not allowed(src, dst, cause, new_attempt=new_attempt)
            continue
        fleet[car] = dst
        tally = counts(fleet)
        assert sum(tally.values()) == len(fleet) == 20
        assert set(tally) == {s.value for s in VinState}


@given(STATES, STATES, CAUSES, st.booleans())
def test_who_may_cause_what(src: VinState, dst: VinState, cause: Cause, new_attempt: bool) -> None:
    if not allowed(src, dst, cause, new_attempt=new_attempt):
        return
    if cause is Cause.CAR:
        assert dst in CAR_STATES  # a car never claims a dealer remedy, a timeout or unreachable
        assert src not in {VinState.REMEDIED, VinState.REMEDIED_AT_DEALER, VinState.INSPECTED_NOT_NEEDED}
        assert src is not VinState.UNREACHABLE  # an operator's record of a stolen or exported car stands
    elif cause is Cause.OPERATOR:
        assert dst in {VinState.REMEDIED_AT_DEALER, VinState.INSPECTED_NOT_NEEDED, VinState.UNREACHABLE}
        assert src is not VinState.REMEDIED  # a verified OTA remedy is never overwritten
    elif cause is Cause.TIMEOUT:
        assert dst is VinState.TIMED_OUT and src in NOT_STARTED | INSTALLING
    elif cause is Cause.CANCEL:
        assert dst is VinState.WITHDRAWN and src in NOT_STARTED  # never a car mid-install
    else:
        assert dst is VinState.PENDING and src in {VinState.FAILED, VinState.ROLLED_BACK, VinState.TIMED_OUT}


@given(STATES)
def test_success_is_final_for_reports_timeouts_and_cancels(src: VinState) -> None:
    if src in SUCCESS:
        for dst in VinState:
            for cause in (Cause.CAR, Cause.TIMEOUT, Cause.CANCEL, Cause.RETRY):
                assert not allowed(src, dst, cause, new_attempt=True)


def test_a_withdrawn_car_that_had_started_still_finishes() -> None:
    assert allowed(VinState.WITHDRAWN, VinState.INSTALLING, Cause.CAR)
    assert allowed(VinState.WITHDRAWN, VinState.REMEDIED, Cause.CAR)
    assert not allowed(VinState.WITHDRAWN, VinState.NOTIFIED, Cause.CAR)
    assert not allowed(VinState.INSTALLING, VinState.WITHDRAWN, Cause.CANCEL)


@given(st.integers(0, 100_000), st.lists(st.one_of(st.integers(1, 500), st.floats(0.1, 100)), min_size=1, max_size=8))
def test_waves_cover_the_population_exactly(population: int, spec: list[int | float]) -> None:
    waves = [rules.Wave(cars=s) if isinstance(s, int) else rules.Wave(percent=s) for s in spec]
    sizes = rules.wave_sizes(population, waves)
    assert sum(sizes) == population
    assert all(size > 0 for size in sizes) or population == 0
    assert len(sizes) <= len(waves)


def test_a_canary_then_percentages() -> None:
    waves = [rules.Wave(cars=5), rules.Wave(percent=10), rules.Wave(percent=100)]
    assert rules.wave_sizes(100, waves) == [5, 10, 85]


def test_rate_limit_and_ramp() -> None:
    assert rules.allowance(None, 10_000, 10_000) is None
    flat = rules.RateLimit(per_minute=10)
    assert rules.allowance(flat, 0, 0) == 10
    assert rules.allowance(flat, 50, 7) == 3
    ramped = rules.RateLimit(per_minute=100, ramp=rules.Ramp(start_per_minute=5, factor=2, every_notified=10))
    assert [rules.allowance(ramped, n, 0) for n in (0, 10, 20, 30, 40, 1000)] == [5, 10, 20, 40, 80, 100]


def test_windows_in_local_time_including_across_midnight() -> None:
    berlin, la = rules.zone("Europe/Berlin"), rules.zone("America/Los_Angeles")
    night = [rules.Window(start=time(1), end=time(5))]
    at = datetime(2026, 3, 2, 1, 30, tzinfo=UTC)  # Monday: 02:30 in Berlin, Sunday 17:30 in LA
    assert rules.in_window(night, at, berlin)
    assert not rules.in_window(night, at, la)
    assert rules.in_window([], at, la)
    late = [rules.Window(days=[6], start=time(22), end=time(2))]  # Sunday 22:00 to Monday 02:00
    sunday_late = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    assert rules.in_window(late, sunday_late, rules.zone("UTC"))
    assert rules.in_window(late, sunday_late + timedelta(hours=2), rules.zone("UTC"))  # Monday 01:00
    assert not rules.in_window(late, sunday_late + timedelta(hours=4), rules.zone("UTC"))


@given(
    st.dictionaries(st.sampled_from([s.value for s in VinState]), st.integers(0, 50), min_size=1),
    st.integers(0, 100),
    st.one_of(st.none(), st.integers(1, 20)),
)
def test_gate_counts_errors_first(by_state: dict[str, int], success: int, error_count: int | None) -> None:
    plan = rules.RolloutPlan(success_threshold_percent=success, error_threshold_count=error_count)
    gate = rules.gate(plan, by_state)
    assert gate.size == sum(by_state.values())
    if error_count is not None and gate.errors >= error_count and gate.errors > 0:
        assert gate.status is rules.GateStatus.TRIPPED
    elif gate.remedied >= gate.needed:
        assert gate.status is rules.GateStatus.PASSED
    else:
        assert gate.status is rules.GateStatus.WAITING


def test_resumed_wave_trips_only_on_new_errors() -> None:
    plan = rules.RolloutPlan(error_threshold_count=2, success_threshold_percent=100)
    seen = {"failed": 2, "pending": 8}
    assert rules.gate(plan, seen).status is rules.GateStatus.TRIPPED
    assert rules.gate(plan, seen, error_baseline=2).status is rules.GateStatus.WAITING
    assert rules.gate(plan, {"failed": 4, "pending": 6}, error_baseline=2).status is rules.GateStatus.TRIPPED


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    plan = rules.RolloutPlan(retry_backoff_s=60, retry_backoff_max_s=200)
    assert [rules.retry_delay(plan, n).total_seconds() for n in range(4)] == [60, 120, 200, 200]
