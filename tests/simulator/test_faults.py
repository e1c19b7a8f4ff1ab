"""Failure injection: a seeded plan picks exact, repeatable sets of cars."""

from __future__ import annotations

from collections import Counter

import pytest

from firmware_bundles.assignment import Assignment
from firmware_bundles.vin import make_vin
from simulator.faults import CarFaults, FaultPlan, FaultyHealth, ThrottledTransport
from vehicle_agent.installer import SlotBackend
from vehicle_agent.transport import MemoryTransport

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


def test_the_newer_faults_leave_the_older_picks_alone_and_count_exactly() -> None:
    old = FaultPlan(fail_rate=0.1, offline_rate=0.05, defer_rate=0.2, seed=5).assign(VINS)
    new = FaultPlan(
        fail_rate=0.1, offline_rate=0.05, defer_rate=0.2, slow_rate=0.03, power_cut_rate=0.07, late_rate=0.011, seed=5
    ).assign(VINS)
    for vin in VINS:
        assert (old[vin].fail, old[vin].offline, old[vin].defer) == (new[vin].fail, new[vin].offline, new[vin].defer)
    total: Counter[str] = Counter()
    for faults in new.values():
        total.update(faults.names())
    assert total == {"fail": 100, "offline": 50, "defer": 200, "slow": 30, "power_cut": 70, "late": 11}


def test_faults_travel_by_name_and_plans_as_json() -> None:
    faults = CarFaults(slow=True, power_cut=True)
    assert faults.names() == ["slow", "power_cut"]
    assert CarFaults.from_names(faults.names()) == faults
    with pytest.raises(ValueError):
        CarFaults.from_names(["gremlins"])
    plan = FaultPlan(slow_rate=0.5, slow_bytes_per_second=2048, power_cut_seconds=0.5, late_seconds=3, seed=9)
    assert FaultPlan.from_json(plan.to_json()) == plan
    assert plan.active and FaultPlan(late_rate=0.1).active


@pytest.mark.parametrize(
    "bad", [{"slow_rate": 2.0}, {"power_cut_rate": -1}, {"slow_bytes_per_second": 0}, {"late_seconds": -1}]
)
def test_impossible_new_faults_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FaultPlan(**bad)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_slow_link_delivers_every_byte_at_the_set_rate() -> None:
    clock = Clock()
    data = bytes(range(256)) * 40  # 10 KiB
    inner = MemoryTransport({"http://repo/x": data}, chunk_size=4096)
    slow = ThrottledTransport(inner, 2048, piece=512, sleep=clock.sleep, monotonic=clock.monotonic)
    with slow.stream("http://repo/x") as chunks:
        assert b"".join(chunks) == data
    assert clock.now - 100.0 == pytest.approx(len(data) / 2048)
    assert slow.bytes == len(data)
    assert slow.waited == pytest.approx(len(data) / 2048)
    with slow.stream("http://repo/x", start=10_000) as chunks:  # ranges still work (a resumed download)
        assert chunks.start == 10_000
        assert b"".join(chunks) == data[10_000:]
