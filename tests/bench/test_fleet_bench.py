"""`ota-bench`: the JSON it assembles, its table and plot, and (CI) a 2,000-car run of the real thing."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bench.fleet import (
    KEYS,
    PLAN,
    Backend,
    Measured,
    Options,
    assemble,
    interrupt_on_termination,
    leaf_routes,
    markdown,
    parse,
    plot,
    server_env,
    thin,
)
from bench.notice_floor import FloorResult, floor_topics
from bench.raw_broker import RawResult, split
from firmware_bundles import topics
from simulator.faults import FaultPlan
from simulator.progress import Outcome
from simulator.workers import on_brokers
from tests import services

SMOKE_CARS = 2000


def measured(*, sent: int = 600, persisted: int = 600, remedied: int = 100) -> Measured:
    backend = Backend("postgresql", "postgresql+psycopg://x/y", "fresh db", "mosquitto", "hub + 1 leaf", 2)
    outcome = Outcome(100, remedied, 100 - remedied, 12.0, {}, {"remedied": remedied})
    return Measured(
        backend,
        workers=2,
        outcome=outcome,
        campaign_id=1,
        seconds_to_done=12.5,
        notices=[0.1 * i for i in range(1, 101)],
        timeline=[{"t": 1.0 * i, "remedied": 10 * i, "failed": 0} for i in range(11)],
        reports_sent=sent,
        report_bytes=sent * 500,
        reports_persisted=persisted,
        ingested=600.0,
        server_cpu_s=5.0,
        peak_rss={"server": 120.0, "hub": 9.0, "leaf-1": 10.0, "worker-0": 70.0, "worker-1": 71.5},
        raw=RawResult(sent, 500, 2, 0.05, 12_000.0),
    )


def test_the_json_has_every_key_of_the_issue_first_and_computes_the_ratios() -> None:
    result = assemble(Options(cars=100), measured())
    assert list(result)[: len(KEYS)] == list(KEYS)
    assert result["seconds_to_all_remedied"] == 12.5
    assert result["seconds_to_last_notice"] == pytest.approx(10.0)
    assert result["reports_per_second"] == 48.0  # 600 ingested over 12.5 s
    assert result["server_cpu_ms_per_car"] == 50.0
    assert result["delivery_ratio"] == pytest.approx(0.004)
    assert result["peak_rss_mb"]["server"] == 120.0
    assert result["peak_rss_mb"]["broker"] == 19.0
    assert result["peak_rss_mb"]["simulator"] == 141.5
    assert result["backend"]["database"] == "postgresql" and result["backend"]["broker"] == "mosquitto"
    assert result["reports_match"] and result["plan"] == PLAN
    json.dumps(result)  # it is plain JSON


def test_the_status_messages_a_car_sends_are_counted_per_car() -> None:
    counted = replace(measured(), status_messages=210, manifest_messages=200)  # 600 steps in 210 messages
    result = assemble(Options(cars=100), counted)
    assert result["report_messages_per_car"] == pytest.approx(2.1)
    assert result["manifest_messages_per_car"] == pytest.approx(2.0)
    assert "manifest messages per car" in markdown(result)


def test_not_all_remedied_has_no_time_to_all_remedied_and_a_mismatch_is_loud() -> None:
    result = assemble(Options(cars=100), measured(remedied=90, persisted=598))
    assert result["seconds_to_all_remedied"] is None
    assert result["seconds_to_done"] == 12.5
    assert not result["reports_match"]
    assert "MISMATCH" in markdown(result)


def test_the_table_and_the_plot(tmp_path: Path) -> None:
    result = assemble(Options(cars=100), measured())
    table = markdown(result)
    assert table.splitlines()[0] == "### ota-bench: 100 cars"
    for name in ("launch to 100% remedied", "reports sent / persisted", "raw broker capacity", "peak RSS server"):
        assert name in table
    plot(result, [0.1, 0.2], tmp_path / "fleet-100.png")
    assert (tmp_path / "fleet-100.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flags_become_options() -> None:
    options = parse(
        ["--cars", "30", "--power-cut-rate", "0.1", "--late-rate", "0.2", "--slow-rate", "0.3", "--seed", "4"]
    )
    assert options.cars == 30
    assert options.faults == FaultPlan(power_cut_rate=0.1, late_rate=0.2, slow_rate=0.3, seed=4)
    assert parse(["--postgres", ""]).postgres is None
    assert (options.ecus, parse(["--ecus", "3"]).ecus) == (1, 3)
    with pytest.raises(SystemExit):
        parse(["--brokers", "1"])
    with pytest.raises(SystemExit):
        parse(["--ecus", "0"])
    assert (options.sim_nice, parse(["--sim-nice", "19"]).sim_nice) == (0, 19)
    for wrong in ("-1", "20"):
        with pytest.raises(SystemExit):
            parse(["--sim-nice", wrong])


def test_a_server_setting_reaches_the_server_and_the_callers_ota_environment_does_not() -> None:
    """A run tried with another server setting gets it, named: the caller's OTA_ environment was
    dropped before (a window tried by exporting OTA_NOTICE_CONCURRENCY never reached the server)."""
    options = parse(
        ["--server-setting", "OTA_NOTICE_CONCURRENCY=8000", "--server-setting", "OTA_SCHEDULER_MAX_PER_TICK=5"]
    )
    assert options.server_settings == (("OTA_NOTICE_CONCURRENCY", "8000"), ("OTA_SCHEDULER_MAX_PER_TICK", "5"))
    caller = {"PATH": "/bin", "OTA_NOTICE_CONCURRENCY": "1", "OTA_LOG_LEVEL": "debug", "OTA_SQL_PROFILE": "1"}
    env = server_env(caller, options, "postgresql://db", "mqtt://hub")
    assert env["OTA_NOTICE_CONCURRENCY"] == "8000" and env["OTA_SCHEDULER_MAX_PER_TICK"] == "5"
    assert "OTA_LOG_LEVEL" not in env and env["OTA_SQL_PROFILE"] == "1" and env["PATH"] == "/bin"
    assert (env["OTA_DATABASE_URL"], env["OTA_MQTT_URL"]) == ("postgresql://db", "mqtt://hub")
    plain = server_env(caller, parse([]), "postgresql://db", None)
    assert "OTA_NOTICE_CONCURRENCY" not in plain and "OTA_MQTT_URL" not in plain
    for wrong in ("NOTICE_CONCURRENCY=8000", "OTA_NOTICE_CONCURRENCY", "OTA_=1", "OTA_DATABASE_URL=sqlite://"):
        with pytest.raises(SystemExit):
            parse(["--server-setting", wrong])
    with pytest.raises(SystemExit):
        parse(["--server-setting", "OTA_NOTICE_CONCURRENCY=1", "--server-setting", "OTA_NOTICE_CONCURRENCY=2"])


def test_helpers_split_and_thin() -> None:
    assert split(10, 3) == [4, 3, 3]
    points = [{"t": float(i)} for i in range(1000)]
    thinned = thin(points, 100)
    assert len(thinned) == 100 and thinned[0] == points[0] and thinned[-1] == points[-1]


def ota_bench() -> list[str]:
    script = Path(sys.executable).with_name("ota-bench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bench.fleet"]


@pytest.mark.services
def test_each_leaf_carries_in_the_notices_of_the_cars_on_it_and_its_share_of_the_floors() -> None:
    """Routed as a clustered broker routes: every car's notice to the leaf it connects to (as the workers
    spread the cars), every floor notice to exactly one leaf, so the floor still passes through the leaves."""
    vins = [f"1HGCM82633A{n:06d}" for n in range(7)]
    urls = ["mqtt://leaf-1", "mqtt://leaf-2", "mqtt://leaf-3"]
    routes = leaf_routes(vins, 5, len(urls))
    for config in on_brokers([{"vin": vin} for vin in vins], urls):
        holding = [i for i, routed in enumerate(routes) if config["vin"] in routed]
        assert holding == [urls.index(config["mqtt_url"])], config
    floor = [topics.campaign_topic(vin) for leaf in routes for vin in leaf if vin not in vins]
    assert sorted(floor) == sorted(floor_topics(5))  # each once


def test_the_benchmark_runs_2000_cars_on_postgresql_and_bridged_mosquitto(tmp_path: Path) -> None:
    """CI smoke: it completes, every car is remedied, every report sent is stored; figures printed, not judged."""
    services.need("PostgreSQL", services.POSTGRES_HOST, services.POSTGRES_PORT)
    from simulator.brokers import mosquitto_binary

    if mosquitto_binary() is None:
        if services.required():
            pytest.fail("the mosquitto binary is missing and OTA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("the mosquitto binary is not installed")
    out = tmp_path / "fleet.json"
    dsn = (
        f"host={services.POSTGRES_HOST} port={services.POSTGRES_PORT} dbname={services.POSTGRES_ADMIN_DB} user=postgres"
    )
    done = subprocess.run(
        [*ota_bench(), "--cars", str(SMOKE_CARS), "--json", str(out), "--out-dir", str(tmp_path), "--postgres", dsn],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-5000:]}"
    result = json.loads(out.read_text())
    assert set(KEYS) <= set(result)
    assert (result["cars"], result["remedied"], result["failed"]) == (SMOKE_CARS, SMOKE_CARS, 0)
    assert result["reports_sent"] == result["reports_persisted"] == 6 * SMOKE_CARS
    assert result["backend"]["database"] == "postgresql" and result["backend"]["broker"] == "mosquitto"
    assert result["seconds_to_all_remedied"] and result["seconds_to_last_notice"]
    assert result["broker_raw_msgs_per_second"] and result["delivery_ratio"]
    floor = result["notice_floor"]  # the launch's notices again, through the brokers alone
    assert floor["notices"] == SMOKE_CARS and floor["payload_bytes"] > 1000 and floor["seconds"], floor
    assert (tmp_path / f"fleet-{SMOKE_CARS}.md").read_text() in done.stdout
    assert (tmp_path / f"fleet-{SMOKE_CARS}.png").stat().st_size > 0
    print(done.stdout)  # the figures, in the CI log (pytest -s or on failure)


def test_the_table_says_how_the_kernel_shared_the_cpu_and_at_what_niceness(monkeypatch: pytest.MonkeyPatch) -> None:
    def row(result: dict[str, object]) -> str:
        return next(line for line in markdown(result).splitlines() if "workers / cores" in line)

    monkeypatch.setattr("bench.fleet.autogroup_enabled", lambda: True)
    shared = assemble(Options(cars=100), measured())
    assert shared["cpu_shared_by_session"] is True
    assert "(CPU shared by session)" in row(shared)
    behind = assemble(Options(cars=100, sim_nice=19), replace(measured(), fleet_session_niceness=19))
    assert behind["fleet_session_niceness"] == 19  # --sim-nice: each worker's session lowered too
    assert "(niceness 19, CPU shared by session, the workers' sessions at niceness 19)" in row(behind)
    monkeypatch.setattr("bench.fleet.autogroup_enabled", lambda: False)
    assert "(niceness 5, CPU shared by task)" in row(assemble(Options(cars=100, sim_nice=5), measured()))
    monkeypatch.setattr("bench.fleet.autogroup_enabled", lambda: None)  # not Linux: nothing said
    assert "(" not in row(assemble(Options(cars=100), measured())).split("|")[2]


def test_the_table_says_how_long_the_notices_take_through_the_brokers_alone() -> None:
    def row(result: dict[str, object]) -> str:
        return next(line for line in markdown(result).splitlines() if "through the brokers alone" in line)

    cpu = {"hub": 2.0, "leaf-1": 0.9, "subscriber": 0.6, "publisher": 1.4}
    timed = assemble(Options(cars=100), replace(measured(), floor=FloorResult(100, 5210, 4.8, cpu)))
    assert timed["notice_floor"] == {
        "notices": 100,
        "payload_bytes": 5210,
        "seconds": 4.8,
        "cpu_seconds": cpu,
        "note": "",
    }
    assert "| 4.80 s (CPU: hub 2.00 s, leaf-1 0.90 s, subscriber 0.60 s, publisher 1.40 s) |" in row(timed)
    untimed = replace(measured(), floor=FloorResult(100, 5210, None, note="mosquitto_sub not installed"))
    assert "| n/a (mosquitto_sub not installed) |" in row(assemble(Options(cars=100), untimed))
    assert assemble(Options(cars=100), measured())["notice_floor"] is None  # the embedded broker: none
    assert "| n/a |" in row(assemble(Options(cars=100), measured()))


def test_the_bench_stops_everything_on_sigterm_and_sighup_as_on_ctrl_c() -> None:
    """Its services are out of reach of a signal to the bench's group: the bench must stop them."""

    before = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    collecting = gc.isenabled()
    # No collection meanwhile: the handler's KeyboardInterrupt raised inside a collector callback
    # (hypothesis installs one) is "ignored" there, and the sleep below would run out instead.
    gc.disable()
    try:
        interrupt_on_termination()
        for signum in before:
            with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
                os.kill(os.getpid(), signum)
                time.sleep(5)  # the handler runs at the next bytecode; never reached
    finally:
        if collecting:
            gc.enable()
        for signum, handler in before.items():
            signal.signal(signum, handler)
