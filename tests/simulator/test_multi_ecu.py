"""`ota-sim --ecus N`: each car has N ECUs with distinct hardware ids, its own slots each, one recall for all."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.fleet import make_fleet
from simulator.operator_client import OperatorClient
from simulator.runner import InProcessFleet, Pacing
from simulator.scenario import FIX_VERSION, ScenarioOptions, file_recall, run_recall, second_person
from simulator.server_process import ServerProcess
from vehicle_agent.installer import FileSlots

PLAN = {"waves": [{"percent": 100}]}


def test_a_fleet_with_three_ecus_per_car_registers_distinct_hardware_ids() -> None:
    fleet = make_fleet(4, seed=5, ecus=3)
    assert len(set(fleet.all_hardware_ids())) == 3 and fleet.all_hardware_ids()[0] == fleet.hardware_id
    for car in fleet.cars:
        ecus = car.registration()["ecus"]
        assert [e["hardware_id"] for e in ecus] == list(fleet.all_hardware_ids())
        assert [e["primary"] for e in ecus] == [True, False, False]
        assert ecus[0]["serial"] == car.ecu_serial
    serials = [e["serial"] for car in fleet.cars for e in car.registration()["ecus"]]
    assert len(set(serials)) == len(serials) == 12
    one = make_fleet(2, seed=5)  # the default stays one ECU, as before
    assert [len(car.registration()["ecus"]) for car in one.cars] == [1, 1] and one.all_hardware_ids() == (
        one.hardware_id,
    )
    with pytest.raises(ValueError, match="1 to 32 ECUs"):
        make_fleet(1, ecus=33)


class _Recorder:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def create_recall(self, body: dict[str, Any]) -> dict[str, Any]:
        self.bodies.append(body)
        return {"id": 1, **body}


def test_the_recall_names_one_release_per_hardware_id() -> None:
    fleet = make_fleet(2, seed=1, ecus=2)
    releases = [
        {"id": 10 + i, "hardware_id": hw, "version": FIX_VERSION} for i, hw in enumerate(fleet.all_hardware_ids())
    ]
    recorder = _Recorder()
    file_recall(recorder, fleet, releases)  # type: ignore[arg-type]
    file_recall(recorder, fleet, releases[0])  # type: ignore[arg-type]
    several, single = recorder.bodies
    assert (several["release_id"], several["release_ids"]) == (10, [10, 11])
    assert "hardware_id" not in several["population"]  # refused with several releases: each names its own
    assert single["release_id"] == 10 and "release_ids" not in single
    assert single["population"]["hardware_id"] == fleet.hardware_id


def test_ota_sim_refuses_a_car_without_ecus() -> None:
    result = CliRunner().invoke(app, ["--server", "http://127.0.0.1:9", "--token", "t", "--ecus", "0"])
    assert result.exit_code == 2 and "--ecus" in result.output


def test_two_ecu_cars_are_remedied_on_both_ecus_in_their_own_slots(tmp_path: Path) -> None:
    cars = 3
    fleet = make_fleet(cars, seed=7, ecus=2)
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    server = ServerProcess(tmp_path / "server", env=env)
    runner = InProcessFleet(tmp_path / "cars", pacing=Pacing.per_second(200))
    with (
        server as endpoints,
        OperatorClient(endpoints.api_url, token=server.admin_token()) as client,
        second_person(client, "safety-officer") as approver,
    ):
        launched = datetime.now(UTC)
        summary = run_recall(client, fleet, runner, ScenarioOptions(timeout=180, rollout=PLAN), None, approver)
        (recall,) = [r for r in client.recalls() if r["campaign_number"] == summary.recall_number]
        vehicles = {car.vin: client.vehicle(car.vin) for car in fleet.cars}
        discrepancies = [client.call("GET", "/api/v1/discrepancies", params={"vin": car.vin}) for car in fleet.cars]

    assert (summary.remedied, summary.failed) == (cars, 0), summary
    assert len(recall["release_ids"]) == 2  # one recall updates both ECUs
    # every image the cars measured (the factory's at start, the fix after) is one the server knows
    assert [page["items"] for page in discrepancies] == [[]] * cars
    for car in fleet.cars:
        for ecu in car.all_ecus():
            slots = FileSlots(tmp_path / "cars" / car.vin / "slots" / ecu.serial)
            assert slots.active_slot() == slots.booted_slot() == "b", (car.vin, ecu.serial)
            assert slots.read_header() == {"hardware_id": ecu.hardware_id, "version": FIX_VERSION}
        # the server's record is the car's own word: both ECUs reported on the fix after the launch
        shown = {e["serial"]: e for e in vehicles[car.vin]["ecus"]}
        for ecu in car.all_ecus():
            reported = shown[ecu.serial]
            assert (reported["source"], reported["installed_version"]) == ("reported", FIX_VERSION), reported
            assert reported["declared_version"] == fleet.installed_version
            assert datetime.fromisoformat(reported["reported_at"]) > launched
