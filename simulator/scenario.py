"""One recall, end to end, as an operator and a fleet would live it.

Build and upload the fix, register the fleet, start every car's agent, file the
recall, launch it and watch the server's counts until every car is done.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from firmware_bundles.bundle import build_bundle, sample_image
from simulator.errors import ServerError
from simulator.fleet import Fleet
from simulator.operator_client import OperatorClient
from simulator.progress import Outcome, watch_campaign

FIX_VERSION = "2.0.0"
REGISTER_CHUNK = 5000


class FleetRunner(Protocol):
    """Runs the cars' agents somewhere (threads, processes) while the scenario drives the server."""

    def start(self, fleet: Fleet, agent_configs: list[dict[str, Any]]) -> None: ...

    def wait_connected(self, timeout: float) -> int: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class ScenarioOptions:
    image_size: int = 16 * 1024
    timeout: float = 600.0
    fix_version: str = FIX_VERSION
    release_counter: int = 2


@dataclass(frozen=True)
class Summary:
    cars: int
    remedied: int
    failed: int
    seconds: float
    campaign_id: int
    recall_number: str
    failures_by_reason: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        return {
            "cars": self.cars,
            "remedied": self.remedied,
            "failed": self.failed,
            "seconds": self.seconds,
            "campaign_id": self.campaign_id,
            "recall_number": self.recall_number,
            "failures_by_reason": self.failures_by_reason,
        }


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.log(text)


def upload_fix(client: OperatorClient, fleet: Fleet, options: ScenarioOptions) -> dict[str, Any]:
    image = sample_image(fleet.hardware_id, options.fix_version, size=options.image_size)
    bundle = build_bundle(image, fleet.hardware_id, options.fix_version, options.release_counter)
    return client.upload_release(bundle.data, fleet.hardware_id, options.fix_version, options.release_counter)


def register_fleet(client: OperatorClient, fleet: Fleet) -> None:
    bodies = [car.registration() for car in fleet.cars]
    for start in range(0, len(bodies), REGISTER_CHUNK):
        client.register_vehicles(bodies[start : start + REGISTER_CHUNK])


def file_recall(client: OperatorClient, fleet: Fleet, release: dict[str, Any]) -> dict[str, Any]:
    """File the recall for this run's cars; a clashing campaign number is drawn again."""
    for _ in range(5):
        number = f"26V-{secrets.randbelow(900_000) + 100_000}"
        body = {
            "campaign_number": number,
            "manufacturer_number": f"SIM-{fleet.run_id}",
            "title": "Battery management software may allow cell overheating",
            "defect": "The battery management software may not limit charging current when a cell overheats.",
            "safety_risk": "An overheating cell increases the risk of a fire.",
            "remedy": f"Over-the-air update of the battery management software to {release['version']}.",
            "release_id": release["id"],
            "population": {
                "models": [fleet.model],
                "hardware_id": fleet.hardware_id,
                "installed_versions": {"max": fleet.installed_version},
            },
        }
        try:
            return client.create_recall(body)
        except ServerError as exc:
            if "409" not in str(exc):
                raise
    raise ServerError("could not find a free campaign number after 5 tries")


def run_recall(
    client: OperatorClient,
    fleet: Fleet,
    runner: FleetRunner,
    options: ScenarioOptions,
    console: Console | None,
) -> Summary:
    """The whole recall; the runner's cars are stopped on the way out, whatever happens."""
    _say(console, f"Building and uploading the fix {options.fix_version} for {fleet.hardware_id}")
    release = upload_fix(client, fleet, options)
    _say(console, f"Registering {len(fleet.cars)} vehicles")
    register_fleet(client, fleet)
    configs = [client.agent_config(car.vin) for car in fleet.cars]
    _say(console, f"Starting {len(fleet.cars)} vehicle agents")
    runner.start(fleet, configs)
    try:
        connected = runner.wait_connected(timeout=max(30.0, len(fleet.cars) / 20))
        _say(console, f"{connected} cars online; filing the recall")
        recall = file_recall(client, fleet, release)
        campaign = client.launch(recall["id"])
        _say(
            console,
            f"Recall {recall['campaign_number']} launched: campaign {campaign['id']}, {campaign['population']} cars",
        )
        started = time.monotonic()
        outcome: Outcome = watch_campaign(
            lambda: client.progress(campaign["id"]), timeout=options.timeout, console=console
        )
        return Summary(
            cars=len(fleet.cars),
            remedied=outcome.remedied,
            failed=outcome.failed,
            seconds=round(time.monotonic() - started, 2),
            campaign_id=campaign["id"],
            recall_number=recall["campaign_number"],
            failures_by_reason=outcome.failures_by_reason,
        )
    finally:
        runner.stop()


def state_root(base: Path, fleet: Fleet) -> Path:
    return base / "sim" / fleet.run_id
