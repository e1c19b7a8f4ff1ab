"""One recall, end to end, as an operator and a fleet would live it.

Upload the fleet's installed version and build and upload the fix as a small patch
of it (so the server has a base to build a delta from), register the fleet, start every car's agent, file the
recall, launch it and watch the server's counts until every car is done.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from firmware_bundles.bundle import build_bundle, revised_image, sample_image
from simulator.errors import ServerError
from simulator.fleet import Car, Fleet
from simulator.operator_client import OperatorClient
from simulator.progress import DEFAULT_SERVER_PATIENCE_S, Outcome, watch_campaign

FIX_VERSION = "2.0.0"
REGISTER_CHUNK = 5000


class FleetRunner(Protocol):
    """Runs the cars' agents somewhere (threads, processes) while the scenario drives the server."""

    def start(self, fleet: Fleet, agent_configs: list[dict[str, Any]]) -> None: ...

    def wait_connected(self, timeout: float) -> int: ...

    def stop(self) -> None: ...


def tell_launched(runner: FleetRunner) -> None:
    """Tell a runner that wants to know (late joiners come after the launch) that the campaign is out."""
    launched = getattr(runner, "launched", None)
    if callable(launched):
        launched()


@dataclass(frozen=True)
class ScenarioOptions:
    timeout: float = 600.0
    fix_version: str = FIX_VERSION
    release_counter: int = 2
    rollout: dict[str, Any] | None = None  # the recall's rollout plan; None: the server's default
    server_patience: float = DEFAULT_SERVER_PATIENCE_S  # how long the watch asks a silent server again


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


def factory_image(fleet: Fleet, hardware_id: str | None = None) -> bytes:
    """The image every simulated car's ECU of ``hardware_id`` (default: the primary's) runs in slot a.

    As ``FileSlots.open_or_seed`` writes it.
    """
    return sample_image(hardware_id or fleet.hardware_id, fleet.installed_version)


def upload_installed(client: OperatorClient, fleet: Fleet) -> list[dict[str, Any]]:
    """The version the fleet runs, as release counter 1, for each ECU hardware id.

    The server builds deltas only from releases it holds.
    """
    releases = []
    for hardware_id in fleet.all_hardware_ids():
        bundle = build_bundle(factory_image(fleet, hardware_id), hardware_id, fleet.installed_version, 1)
        releases.append(client.upload_release(bundle.data, hardware_id, fleet.installed_version, 1))
    return releases


def upload_fix(
    client: OperatorClient, fleet: Fleet, options: ScenarioOptions, hardware_id: str | None = None
) -> dict[str, Any]:
    """The fix for one hardware id (default: the primary's): the factory image with a few KiB changed,
    as a real software fix is."""
    hardware_id = hardware_id or fleet.hardware_id
    image = revised_image(factory_image(fleet, hardware_id), hardware_id, options.fix_version)
    bundle = build_bundle(image, hardware_id, options.fix_version, options.release_counter)
    return client.upload_release(bundle.data, hardware_id, options.fix_version, options.release_counter)


def upload_fixes(client: OperatorClient, fleet: Fleet, options: ScenarioOptions) -> list[dict[str, Any]]:
    """The fix of every ECU hardware id of the fleet, the primary's first: one recall names them all."""
    return [upload_fix(client, fleet, options, hardware_id) for hardware_id in fleet.all_hardware_ids()]


def register_fleet(client: OperatorClient, fleet: Fleet) -> None:
    bodies = [car.registration() for car in fleet.cars]
    for start in range(0, len(bodies), REGISTER_CHUNK):
        client.register_vehicles(bodies[start : start + REGISTER_CHUNK])


def agent_configs(client: OperatorClient, fleet: Fleet) -> list[dict[str, Any]]:
    """Each car's agent-config document with its freshly provisioned identity under ``"identity"``.

    The server's answer differs between cars only in the VIN and the ECUs, which the
    fleet registered itself, so one ``GET .../agent-config`` (of the first car) gives the
    broker, repository and roots for all: 30,000 cars do not cost 30,000 requests.
    Identities come from the batched provisioning call. Certificates are issued only
    when the broker speaks TLS (they cost a key pair each).
    """
    template = client.agent_config(fleet.cars[0].vin)
    configs = [_config_of(template, car) for car in fleet.cars]
    tls = template["mqtt_url"].startswith("mqtts://")
    vins = [car.vin for car in fleet.cars]
    identities: dict[str, dict[str, Any]] = {}
    for start in range(0, len(vins), REGISTER_CHUNK):
        for identity in client.provision(vins[start : start + REGISTER_CHUNK], certificate=tls):
            identities[identity["vin"]] = identity
    return [{**doc, "identity": identities[doc["vin"]]} for doc in configs]


def _config_of(template: dict[str, Any], car: Car) -> dict[str, Any]:
    ecus = [{k: ecu[k] for k in ("serial", "hardware_id", "installed_version")} for ecu in car.registration()["ecus"]]
    return {**template, "vin": car.vin, "ecus": ecus}


# What every simulated recall tells the owners, with a person to call (a recall needs one).
OWNER_NOTICE: dict[str, Any] = {
    "purpose": "The battery management software may let a cell overheat; this update fixes it.",
    "what_changes": "Charging current is limited as soon as a battery cell overheats.",
    "expected_minutes": 25,
    "unavailable_functions": ["driving", "charging"],
    "what_to_do": "Park the car and leave it switched off; the update starts by itself.",
    "contact": {
        "name": "Recall desk",
        "role": "Customer care",
        "phone": "+1 555 0100",
        "email": "recalls@example.com",
    },
}


def file_recall(
    client: OperatorClient,
    fleet: Fleet,
    release: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    rollout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """File the recall for this run's cars; a clashing campaign number is drawn again.

    ``release`` is one release or several (one per ECU hardware id, the primary's first:
    the recall names them all in ``release_ids`` and updates every ECU of each car).
    ``rollout`` is the plan (waves, rate, ...); without one the server's default applies.
    """
    releases = [release] if isinstance(release, Mapping) else list(release)
    primary = releases[0]
    population: dict[str, Any] = {"models": [fleet.model], "installed_versions": {"max": fleet.installed_version}}
    if len(releases) == 1:
        named: dict[str, Any] = {"release_id": primary["id"]}
        population["hardware_id"] = primary.get("hardware_id", fleet.hardware_id)
    else:  # the population is every car with an ECU of any release's hardware id
        named = {"release_id": primary["id"], "release_ids": [r["id"] for r in releases]}
    for _ in range(5):
        number = f"26V-{secrets.randbelow(900_000) + 100_000}"
        body = {
            "campaign_number": number,
            "manufacturer_number": f"SIM-{fleet.run_id}",
            "title": "Battery management software may allow cell overheating",
            "defect": "The battery management software may not limit charging current when a cell overheats.",
            "safety_risk": "An overheating cell increases the risk of a fire.",
            "remedy": f"Over-the-air update of the battery management software to {primary['version']}.",
            "owner_notice": OWNER_NOTICE,
            **named,
            "population": population,
        }
        if rollout is not None:
            body["rollout"] = rollout
        try:
            return client.create_recall(body)
        except ServerError as exc:
            if "409" not in str(exc):
                raise
    raise ServerError("could not find a free campaign number after 5 tries")


class SafetyOfficer(OperatorClient):
    """An approver's client, with the operator colleague whose launch requests it approves.

    The two-person rule refuses an approval when either person created the other's token,
    so the admin who made the approver may not request the launch: an operator the same
    admin made does, as in a real organisation (closed together with this client).
    """

    def __init__(self, base_url: str, *, token: str, requester: OperatorClient) -> None:
        super().__init__(base_url, token=token)
        self.requester = requester

    def close(self) -> None:
        self.requester.close()
        super().close()


def second_person(admin: OperatorClient, name: str, *, operator: str | None = None) -> SafetyOfficer:
    """People the ``admin`` creates: an approver ``name`` and an operator who requests launches."""
    requester = OperatorClient(admin.base_url, token=admin.create_token(operator or f"{name}-colleague", "operator"))
    return SafetyOfficer(admin.base_url, token=admin.create_token(name, "approver"), requester=requester)


def launch_recall(
    client: OperatorClient,
    recall: dict[str, Any],
    approver: OperatorClient | None,
    console: Console | None = None,
    *,
    before_approval: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Launch ``recall``; a safety recall is requested by ``client`` and approved by ``approver``
    (after ``before_approval`` returns, when given: the second person's wait).

    A :class:`SafetyOfficer`'s operator colleague requests it instead of ``client`` (who may
    be the admin that created the officer, and so may not be the other person).
    """
    requester = approver.requester if isinstance(approver, SafetyOfficer) else client
    answer = requester.launch(recall["id"])
    if answer.get("state") != "awaiting_approval":
        return answer
    number = recall["campaign_number"]
    _say(console, f"Safety recall {number}: launch requested by {answer['requested_by']}, awaiting a second person")
    if approver is None:
        raise ServerError(f"safety recall {number} needs a second person's approval: give an approver token")
    if before_approval is not None:
        before_approval()
    campaign = approver.approve(recall["id"])
    approved_by = client.recall(recall["id"])["launch_request"]["approved_by"]
    _say(console, f"Safety recall {number}: launch approved by {approved_by}")
    return campaign


def run_recall(
    client: OperatorClient,
    fleet: Fleet,
    runner: FleetRunner,
    options: ScenarioOptions,
    console: Console | None,
    approver: OperatorClient | None = None,
) -> Summary:
    """The whole recall; the runner's cars are stopped on the way out, whatever happens.

    The recall is a safety recall, so ``approver`` (another person) approves its launch.
    """
    _say(console, f"Building and uploading the fix {options.fix_version} for {', '.join(fleet.all_hardware_ids())}")
    upload_installed(client, fleet)
    releases = upload_fixes(client, fleet, options)
    _say(console, f"Registering {len(fleet.cars)} vehicles")
    register_fleet(client, fleet)
    configs = agent_configs(client, fleet)
    _say(console, f"Starting {len(fleet.cars)} vehicle agents")
    runner.start(fleet, configs)
    try:
        connected = runner.wait_connected(timeout=max(30.0, len(fleet.cars) / 20))
        _say(console, f"{connected} cars online; filing the recall")
        recall = file_recall(client, fleet, releases, options.rollout)
        campaign = launch_recall(client, recall, approver, console)
        tell_launched(runner)
        _say(
            console,
            f"Recall {recall['campaign_number']} launched: campaign {campaign['id']}, {campaign['population']} cars",
        )
        started = time.monotonic()
        stats = getattr(runner, "stats", None)
        outcome: Outcome = watch_campaign(
            lambda: client.progress(campaign["id"]),
            timeout=options.timeout,
            console=console,
            fleet=(lambda: stats().bars()) if callable(stats) else None,
            server_patience=options.server_patience,
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
