"""The multi-process fleet's pieces, without processes: slicing, brokers, specs, the progress protocol."""

from __future__ import annotations

import io
import json
import operator
import os
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from firmware_bundles.messages import ReportState
from simulator.cpu_share import autogroup_enabled, session_niceness
from simulator.faults import CarFaults, FaultPlan
from simulator.runner import CAR_ORDER, DepthFirstExecutor, FleetStats, Pacing
from simulator.worker import Emitter, cars_of
from simulator.workers import (
    MAX_NICENESS,
    ProcessFleet,
    WorkerProcess,
    default_workers,
    lower_priority,
    on_brokers,
    on_loopback,
    slices,
    source_address,
    worker_spec,
)


@pytest.mark.parametrize(("cars", "workers"), [(1, 2), (2000, 2), (16_000, 2), (16_001, 3), (30_000, 4)])
def test_workers_by_default_hold_at_most_8000_cars_and_are_at_least_two(cars: int, workers: int) -> None:
    assert default_workers(cars) == workers


@pytest.mark.parametrize(("count", "parts"), [(10, 3), (30_000, 4), (3, 5), (1, 1)])
def test_slices_cover_the_fleet_contiguously_and_evenly(count: int, parts: int) -> None:
    pieces = slices(count, parts)
    assert [i for piece in pieces for i in piece] == list(range(count))
    assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
    assert len(pieces) == min(parts, count)


def configs(count: int) -> list[dict[str, Any]]:
    return [
        {
            "vin": f"VIN{i:014d}",
            "ecus": [{"serial": f"E{i}", "hardware_id": "hw", "installed_version": "1.0"}],
            "mqtt_url": "mqtt://hub:1883",
            "repo_url": "http://server/repo",
            "image_root": "{...image root...}",
            "director_root": "{...director root...}",
            "identity": {"vin": f"VIN{i:014d}", "report_private_key": f"key {i}"},
        }
        for i in range(count)
    ]


def test_cars_are_spread_over_the_leaves_in_turn() -> None:
    spread = on_brokers(configs(5), ["mqtt://a:1", "mqtt://b:2"])
    assert [doc["mqtt_url"] for doc in spread] == ["mqtt://a:1", "mqtt://b:2"] * 2 + ["mqtt://a:1"]
    assert [doc["mqtt_url"] for doc in on_brokers(configs(2), [])] == ["mqtt://hub:1883"] * 2


def test_a_worker_spec_writes_shared_fields_once_and_gives_back_the_same_configs(tmp_path: Path) -> None:
    docs = on_brokers(configs(4), ["mqtt://leaf:1"])
    faults = {docs[1]["vin"]: CarFaults(power_cut=True, slow=True)}
    plan = FaultPlan(power_cut_rate=0.25, slow_rate=0.25, power_cut_seconds=0.5)
    spec = worker_spec(
        1,
        tmp_path / "w1",
        docs,
        faults,
        faults=plan,
        pacing=Pacing(10, 0.1),
        progress_interval=0.25,
        log_level="INFO",
    )
    text = json.dumps(spec)
    assert text.count("image root") == 1 and text.count("director root") == 1
    assert spec["cars"][1]["faults"] == ["slow", "power_cut"]
    assert "faults" not in spec["cars"][0]
    assert FaultPlan.from_json(spec["faults"]) == plan
    back, back_faults = cars_of(json.loads(text))
    assert back == docs
    assert back_faults[docs[1]["vin"]] == CarFaults(power_cut=True, slow=True)
    assert back_faults[docs[0]["vin"]] == CarFaults()


def test_pacing_is_a_rate_in_small_steps() -> None:
    pacing = Pacing.per_second(1000)
    assert (pacing.batch, pacing.pause) == (50, 0.05)
    assert pacing.rate == pytest.approx(1000)
    assert Pacing.per_second(3).batch == 1
    with pytest.raises(ValueError):
        Pacing.per_second(0)
    with pytest.raises(ValueError):
        Pacing(batch=0)


def test_stats_of_several_workers_add_up() -> None:
    a = FleetStats(cars=3, connected=3, reports_sent=9, sent_by_state={"notified": 3, "remedied": 2}, power_cuts=1)
    b = FleetStats(cars=2, connected=1, reports_sent=4, sent_by_state={"notified": 2, "failed": 1}, slow_seconds=0.5)
    total = FleetStats.total([a, b])
    assert (total.cars, total.connected, total.reports_sent, total.power_cuts) == (5, 4, 13, 1)
    assert total.sent_by_state == {"notified": 5, "remedied": 2, "failed": 1}
    assert total.slow_seconds == 0.5
    assert total.cars_in(ReportState.FAILED, ReportState.ROLLED_BACK) == 1
    assert total.bars() == {"cars": 5, "connected": 4, "notified": 5, "remedied": 2, "failed": 1}
    assert FleetStats.from_json({**total.as_json(), "unknown": 1}) == total


def test_the_progress_protocol_is_json_lines_and_the_parent_keeps_the_latest() -> None:
    out = io.StringIO()
    emit = Emitter(out)
    emit("progress", **FleetStats(cars=2, created=1).as_json())
    out.write("a stray line that is not ours\n")
    emit("started", **FleetStats(cars=2, created=2, started=2, connected=2).as_json())
    emit("summary", **FleetStats(cars=2, reports_sent=12).as_json(), peak_rss_kb=2048, cpu_seconds=1.5)
    child = subprocess.Popen([sys.executable, "-c", "pass"], text=True)
    child.wait()
    worker = WorkerProcess(0, 2, child, Path("/nonexistent.log"))
    worker.read(io.StringIO(out.getvalue()))
    assert worker.started
    assert worker.summary is not None and worker.summary["peak_rss_kb"] == 2048
    assert worker.latest.reports_sent == 12
    assert worker.problem() is None  # it exited after its summary: that is a clean stop
    worker.read(io.StringIO(json.dumps({"event": "error", "message": "no room"}) + "\n"))
    assert worker.problem() is not None and "no room" in (worker.problem() or "")


def test_the_cars_threads_serve_the_car_that_started_first_first() -> None:
    executor = DepthFirstExecutor(1)
    gate = threading.Event()
    ran: list[int] = []
    blocker = executor.submit(gate.wait)  # holds the only thread while the others queue up

    def submit_as(order: int) -> Future[None]:
        token = CAR_ORDER.set(order)
        try:
            return executor.submit(ran.append, order)
        finally:
            CAR_ORDER.reset(token)

    futures = [submit_as(order) for order in (5, 1, 9, 0, 3)]
    gate.set()
    for future in [blocker, *futures]:
        future.result(timeout=10)
    assert ran == [0, 1, 3, 5, 9]
    failing = executor.submit(operator.truediv, 1, 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(timeout=10)
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(print)


def test_each_worker_connects_from_its_own_loopback_address_when_the_brokers_are_local() -> None:
    assert [source_address(i) for i in (0, 1, 3)] == ["127.0.1.1", "127.0.1.2", "127.0.1.4"]
    assert on_loopback(["mqtt://127.0.0.1:1883", "mqtts://localhost:8883", "mqtt://[::1]:1"])
    assert not on_loopback(["mqtt://127.0.0.1:1883", "mqtt://broker.example.com:1883"])
    assert not on_loopback(["mqtt://10.0.0.5:1883"])


def test_a_worker_can_run_behind_the_server_at_a_lower_priority() -> None:
    """``ota-bench --sim-nice``: the simulated fleet takes only the CPU the server leaves."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        before = os.getpriority(os.PRIO_PROCESS, child.pid)
        lower_priority(child.pid, 0)  # 0: left as it is
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == before
        lower_priority(child.pid, MAX_NICENESS)
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == MAX_NICENESS
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    for wrong in (-1, MAX_NICENESS + 1):
        with pytest.raises(ValueError, match="niceness must be 0 to 19"):
            lower_priority(os.getpid(), wrong)
        with pytest.raises(ValueError, match="niceness must be 0 to 19"):
            ProcessFleet(Path("unused"), niceness=wrong)


def test_a_lowered_worker_is_behind_the_services_where_the_cpu_is_shared_by_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With autogroup a task's niceness counts only inside its session: the services have sessions of their
    own (simulator.cpu_share), so a worker run at a niceness leads its own session, lowered as much; at
    niceness 0 it stays in the bench's session (the fleet one party)."""
    if autogroup_enabled() is not True:
        pytest.skip("the kernel does not share the CPU by session here")
    real = subprocess.Popen

    def sleeper(_command: list[str], **kwargs: Any) -> subprocess.Popen[str]:  # the worker's own start, kept
        return real([sys.executable, "-c", "import sys; sys.stdin.read()"], **kwargs)

    monkeypatch.setattr("simulator.workers.subprocess.Popen", sleeper)
    started = []
    try:
        for niceness in (5, 0):
            (tmp_path / str(niceness)).mkdir()
            worker = ProcessFleet(tmp_path / str(niceness), niceness=niceness)._spawn(0, {"cars": []})
            started.append(worker.process)
        lowered, plain = (process.pid for process in started)
        assert os.getsid(lowered) == lowered and session_niceness(lowered) == 5
        assert os.getpriority(os.PRIO_PROCESS, lowered) == 5
        assert os.getsid(plain) == os.getsid(0) and session_niceness(plain) == session_niceness(os.getpid())
    finally:
        for process in started:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=10)
