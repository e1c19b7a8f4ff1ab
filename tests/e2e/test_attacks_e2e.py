"""Attacks through the whole stack: real server process, real broker, real agents.

For each: nothing is installed, the old software keeps running, the server shows the
precise reason, and the next genuine update still succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_bundles import uptane
from simulator.fleet import Fleet, make_fleet
from simulator.progress import Outcome, watch_campaign
from simulator.runner import InProcessFleet
from simulator.scenario import ScenarioOptions, agent_configs, file_recall, launch_recall, register_fleet, upload_fix
from tests.e2e.conftest import Stack

CARS = 4


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[InProcessFleet]:
    fleet_runner = InProcessFleet(tmp_path / "cars")
    yield fleet_runner
    fleet_runner.stop()


def launch_and_watch(stack: Stack, fleet: Fleet, release: dict[str, Any]) -> Outcome:
    recall = file_recall(stack.client, fleet, release)
    campaign = launch_recall(stack.client, recall, stack.approver)
    return watch_campaign(lambda: stack.client.progress(campaign["id"]), timeout=120, console=None)


def start_cars(stack: Stack, fleet: Fleet, runner: InProcessFleet, configs: list[dict[str, Any]] | None = None) -> None:
    register_fleet(stack.client, fleet)
    runner.start(fleet, configs or agent_configs(stack.client, fleet))
    runner.wait_connected(timeout=60)


def running_version(runner: InProcessFleet, fleet: Fleet, index: int) -> str | None:
    car = fleet.cars[index]
    slots = runner.agents[car.vin].slots[car.ecu_serial]
    header = slots.read_header(slots.booted_slot())
    assert slots.pending_try() is None  # no half-armed switch left behind
    return None if header is None else header["version"]


def last_reason(stack: Stack, vin: str) -> tuple[str, str | None]:
    campaign = stack.client.vehicle_status(vin)["campaigns"][-1]
    return campaign["state"], campaign["reason"]


def test_tampered_bundle_installs_nothing(embedded_stack: Stack, runner: InProcessFleet) -> None:
    fleet = make_fleet(CARS)
    release = upload_fix(embedded_stack.client, fleet, ScenarioOptions())
    stored = embedded_stack.data_dir / "bundles" / f"{release['sha256']}.otab"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed on the server's disk (or a CDN)
    stored.write_bytes(bytes(data))
    start_cars(embedded_stack, fleet, runner)

    outcome = launch_and_watch(embedded_stack, fleet, release)

    assert (outcome.remedied, outcome.failed) == (0, CARS)
    assert outcome.failures_by_reason == {"hash_mismatch": CARS}
    for i, car in enumerate(fleet.cars):
        assert running_version(runner, fleet, i) == "1.0.0"
        assert last_reason(embedded_stack, car.vin) == ("failed", "hash_mismatch")

    genuine = upload_fix(embedded_stack.client, fleet, ScenarioOptions(fix_version="2.0.1", release_counter=3))
    retry = launch_and_watch(embedded_stack, fleet, genuine)
    assert (retry.remedied, retry.failed) == (CARS, 0)
    assert {running_version(runner, fleet, i) for i in range(CARS)} == {"2.0.1"}


def test_metadata_signed_with_another_key_is_refused(embedded_stack: Stack, runner: InProcessFleet) -> None:
    fleet = make_fleet(CARS)
    release = upload_fix(embedded_stack.client, fleet, ScenarioOptions())
    register_fleet(embedded_stack.client, fleet)
    configs = agent_configs(embedded_stack.client, fleet)  # provisioned: each car signs its reports
    # car 0 trusts a different Image repository root: the server's metadata is, to it,
    # signed with the wrong key
    stranger = uptane.create_root(uptane.RoleSigners.generate(), datetime.now(UTC) + timedelta(days=30))
    configs[0] = {**configs[0], "image_root": stranger.decode()}
    runner.start(fleet, configs)
    runner.wait_connected(timeout=60)

    outcome = launch_and_watch(embedded_stack, fleet, release)

    assert (outcome.remedied, outcome.failed) == (CARS - 1, 1)
    assert outcome.failures_by_reason == {"metadata_signature_invalid": 1}
    assert running_version(runner, fleet, 0) == "1.0.0"
    assert last_reason(embedded_stack, fleet.cars[0].vin) == ("failed", "metadata_signature_invalid")
    assert {running_version(runner, fleet, i) for i in range(1, CARS)} == {"2.0.0"}
