"""Failure injection: a seeded plan picks exact, repeatable sets of cars."""

from __future__ import annotations

from collections import Counter

import pytest

from firmware_bundles.assignment import Assignment
from firmware_bundles.vin import make_vin
from simulator.faults import CarFaults, FaultPlan, FaultyHealth
from vehicle_agent.installer import SlotBackend

VINS = [make_vin("5YJ", "SMX01", "R", "A", i) for i in range(1000)]


def counts(plan: FaultPlan) -> Counter[str]:
    total: Counter[str] = Counter()
    for faults in plan.assign(VINS).values():
        total.update(name for name in ("fail", "offline", "defer") if getattr(faults, name))
    return total


def test_the_same_seed_picks_the_same_cars_and_another_seed_others() -> None:
    plan = FaultPlan(fail_rate=0.1, offline_rate=0.05, defer_rate=0.2, seed=7)
    assert plan.assign(VINS) == FaultPlan(fail_rate=0.1, offline_rate=0.05, defer_rate=0.2, seed=7).assign(VINS)
    other = FaultPlan(fail_rate=0.1, offline_rate=0.05, defer_rate=0.2, seed=8).assign(VINS)
    assert other != plan.assign(VINS)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_rate_picks_exactly_its_share_of_the_fleet(seed: int) -> None:
    plan = FaultPlan(fail_rate=0.1, offline_rate=0.05, defer_rate=0.234, seed=seed)
    assert counts(plan) == {"fail": 100, "offline": 50, "defer": 234}


def test_a_canary_of_ten_with_thirty_percent_failing_has_three_failures() -> None:
    picked = FaultPlan(fail_rate=0.3, seed=42).assign(VINS[:10])
    assert sum(f.fail for f in picked.values()) == 3
    assert set(picked) == set(VINS[:10])


def test_no_rates_no_faults() -> None:
    plan = FaultPlan()
    assert not plan.active
    assert set(plan.assign(VINS).values()) == {CarFaults()}


@pytest.mark.parametrize("bad", [{"fail_rate": 1.5}, {"defer_rate": -0.1}, {"fail_times": 0}, {"defer_seconds": -1}])
def test_impossible_plans_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**bad)  # type: ignore[arg-type]


class Healthy:
    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        return None


def test_faulty_health_fails_the_first_attempts_then_asks_the_real_check() -> None:
    assignment = Assignment("p", "ECU-1", "hw", "2.0", 2, 10, "0" * 64)
    slots: SlotBackend = None  # type: ignore[assignment]  # not looked at
    once = FaultyHealth(Healthy(), times=1)
    assert [once.check(slots, assignment) is None for _ in range(3)] == [False, True, True]
    always = FaultyHealth(Healthy())
    assert [always.check(slots, assignment) is None for _ in range(3)] == [False, False, False]
