"""Where the car's readiness comes from: the state file a Pi reads, and its safe defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firmware_bundles.messages import Network
from vehicle_agent.agent import vehicle_state
from vehicle_agent.config import VehicleOptions, config_from_agent_config, load_config, write_config
from vehicle_agent.errors import ConfigError
from vehicle_agent.vehicle import NOT_READY, AlwaysReady, FakeVehicle, FileVehicleState, Reading

from .fakes import FakeServer

GOOD = {"parked": True, "ignition_off": True, "battery_percent": 80, "network": "wifi"}


def write_state(path: Path, body: object, *, mtime: float = 1_000.0) -> None:
    path.write_text(json.dumps(body))
    os.utime(path, (mtime, mtime))


def test_the_state_file_is_read_when_fresh(tmp_path: Path) -> None:
    path = tmp_path / "vehicle.json"
    write_state(path, GOOD)
    assert FileVehicleState(path, max_age=60, now=lambda: 1_030.0).read() == Reading(True, True, 80, Network.WIFI)


@pytest.mark.parametrize(
    "body",
    [
        {**GOOD, "parked": "yes"},
        {**GOOD, "battery_percent": 140},
        {**GOOD, "network": "satellite"},
        {k: v for k, v in GOOD.items() if k != "ignition_off"},
        ["not", "an", "object"],
    ],
)
def test_a_bad_state_file_reads_as_not_ready(tmp_path: Path, body: object) -> None:
    path = tmp_path / "vehicle.json"
    write_state(path, body)
    assert FileVehicleState(path, now=lambda: 1_000.0).read() == NOT_READY


def test_a_missing_or_stale_state_file_reads_as_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "vehicle.json"
    assert FileVehicleState(path).read() == NOT_READY
    write_state(path, GOOD)
    assert FileVehicleState(path, max_age=60, now=lambda: 1_061.0).read() == NOT_READY  # its writer stopped


def test_without_a_source_the_car_is_taken_as_ready(tmp_path: Path) -> None:
    assert isinstance(vehicle_state(VehicleOptions()), AlwaysReady)
    assert isinstance(vehicle_state(VehicleOptions(state_file=tmp_path / "v.json")), FileVehicleState)


def test_a_fake_vehicle_signals_each_change() -> None:
    vehicle = FakeVehicle()
    calls: list[Reading] = []
    vehicle.watch(lambda: calls.append(vehicle.read()))
    vehicle.set(parked=False)
    assert calls == [Reading(parked=False)]


def test_the_vehicle_table_is_read_from_agent_toml(server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    write_config(config_from_agent_config(server.agent_config_doc(), tmp_path / "state"), path)
    with path.open("a") as out:
        out.write('\n[vehicle]\nstate_file = "run/vehicle.json"\nretry_interval = 60.0\nconsent = "accept"\n')
    options = load_config(path).vehicle
    assert options == VehicleOptions(state_file=tmp_path / "run/vehicle.json", retry_interval=60.0, consent="accept")

    with path.open("a") as out:
        out.write("retry_jitter = 1.5\n")
    with pytest.raises(ConfigError, match="retry_jitter"):
        load_config(path)
