"""Load-run faults against a real server: each one happens, and the campaign still accounts for every car.

Slow links crawl, power cuts kill a car's agent right after it journaled ``installing`` and a
new agent on the same state directory finishes the job, late joiners first connect after the
launch. Every report a car sent is stored once (``campaign_events``), whatever the faults.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.brokers import BrokerCluster, mosquitto_binary
from simulator.faults import FaultPlan
from simulator.fleet import make_fleet
from simulator.operator_client import OperatorClient
from simulator.runner import InProcessFleet, Pacing
from simulator.scenario import ScenarioOptions, Summary, run_recall, second_person
from simulator.server_process import ServerProcess
from simulator.workers import ProcessFleet
from tests import services

PLAN = {"waves": [{"percent": 100}]}


def stored_car_reports(data_dir: Path, campaign_id: int) -> int:
    with sqlite3.connect(data_dir / "ota.db") as db:
        (count,) = db.execute(
            "SELECT count(*) FROM campaign_events WHERE campaign_id = ? AND source = 'car'", (campaign_id,)
        ).fetchone()
    return int(count)


def history(client: OperatorClient, vin: str) -> list[str]:
    return [event["state"] for event in client.vehicle_status(vin)["campaigns"][-1]["history"]]


class RecordingFleet(InProcessFleet):
    """Remembers how many cars were online when the campaign was launched."""

    connected_at_launch = -1

    def launched(self) -> None:
        self.connected_at_launch = self.connected()
        super().launched()


def test_slow_links_power_cuts_and_late_joiners_in_one_process(tmp_path: Path) -> None:
    faults = FaultPlan(slow_rate=0.2, power_cut_rate=0.3, late_rate=0.2, late_seconds=2.0, seed=11)
    fleet = make_fleet(10, seed=11)
    picked = faults.assign([car.vin for car in fleet.cars])
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    server = ServerProcess(tmp_path / "server", env=env)
    runner = RecordingFleet(tmp_path / "cars", faults=faults, pacing=Pacing.per_second(200))
    with (
        server as endpoints,
        OperatorClient(endpoints.api_url, token=server.admin_token()) as client,
        second_person(client, "safety-officer") as approver,
    ):
        summary = run_recall(client, fleet, runner, ScenarioOptions(timeout=180, rollout=PLAN), None, approver)
        stats = runner.stats()
        cut = [vin for vin, f in picked.items() if f.power_cut]
        histories = {vin: history(client, vin) for vin in cut}
        persisted = stored_car_reports(tmp_path / "server", summary.campaign_id)

    assert (summary.remedied, summary.failed) == (10, 0)
    assert runner.connected_at_launch == 8  # the two late joiners were not there yet
    assert stats.late_joined == 2
    assert stats.power_cuts == stats.restarts == 3 == len(cut)
    assert stats.slow_cars == 2 and stats.slow_bytes > 0 and stats.slow_seconds > 0
    assert stats.errors == 0
    for vin, steps in histories.items():  # resumed from the journal: each step once, to the end
        assert steps == ["notified", "downloading", "verifying", "installing", "rebooting", "remedied"], vin
    assert stats.reports_sent == persisted == 60
    assert stats.manifest_messages >= summary.remedied  # each remedied car's install manifest was counted
    assert stats.status_messages > 0  # the messages that carried the steps (lone or batched), re-sends included


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[BrokerCluster | None]:
    """A hub and a leaf when Mosquitto is installed (CI: it must be), else None: the embedded broker."""
    if mosquitto_binary() is None:
        if services.required():
            pytest.fail("the mosquitto binary is missing and OTA_REQUIRE_SERVICES=1", pytrace=False)
        yield None
        return
    with BrokerCluster(tmp_path / "brokers", 2) as cluster:
        yield cluster


def test_every_fault_across_worker_processes_and_bridged_brokers(tmp_path: Path, brokers: BrokerCluster | None) -> None:
    cars = 20
    faults = FaultPlan(
        fail_rate=0.1,
        defer_rate=0.1,
        slow_rate=0.1,
        power_cut_rate=0.2,
        late_rate=0.1,
        offline_rate=0.1,
        offline_seconds=1.0,
        late_seconds=1.0,
        seed=3,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    if brokers is not None:
        env["OTA_MQTT_URL"] = brokers.hub_url
    server = ServerProcess(tmp_path / "server", env=env)
    runner = ProcessFleet(
        tmp_path / "cars",
        workers=2,
        broker_urls=brokers.leaf_urls if brokers is not None else (),
        faults=faults,
        pacing=Pacing.per_second(200),
    )
    fleet = make_fleet(cars, seed=3)
    with (
        server as endpoints,
        OperatorClient(endpoints.api_url, token=server.admin_token()) as client,
        second_person(client, "safety-officer") as approver,
    ):
        summary: Summary = run_recall(client, fleet, runner, ScenarioOptions(timeout=240, rollout=PLAN), None, approver)
        persisted = stored_car_reports(tmp_path / "server", summary.campaign_id)

    stats = runner.stats()
    summaries = runner.summaries()
    assert set(summaries) == {"worker-0", "worker-1"}
    assert sum(s["cars"] for s in summaries.values()) == cars
    # the parent picked the faults over the whole fleet: exact counts, summed over the workers
    assert (stats.power_cuts, stats.restarts, stats.late_joined, stats.slow_cars) == (4, 4, 2, 2)
    assert stats.errors == 0
    # every car is accounted for: 2 fail their health check (rolled back), the rest are remedied
    assert (summary.cars, summary.remedied, summary.failed) == (cars, cars - 2, 2)
    assert summary.failures_by_reason == {"health_check_failed": 2}
    assert (stats.sent_by_state["remedied"], stats.sent_by_state["rolled_back"]) == (cars - 2, 2)
    assert stats.sent_by_state["deferred"] == 2
    assert stats.reports_sent == persisted
    assert all(s["peak_rss_kb"] > 0 and s["open_files_max"] > 0 for s in summaries.values())
