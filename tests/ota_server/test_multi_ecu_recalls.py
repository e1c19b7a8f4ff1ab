"""Multi-ECU recalls: several releases, one per hardware id, installed on a car together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Targets

from firmware_bundles import repo_paths, topics
from firmware_bundles.assignment import Assignment
from firmware_bundles.messages import (
    CampaignNotice,
    ReportState,
    StatusReport,
    encode,
    parse_campaign_message,
)
from ota_server.errors import NotFound
from ota_server.services.repository import RepoReader
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import bundle_bytes, recall_body, upload, vehicle, vin
from vehicle_agent.agent import Agent
from vehicle_agent.config import AgentConfig, EcuConfig
from vehicle_agent.errors import FetchError
from vehicle_agent.health import HeaderHealthCheck
from vehicle_agent.installer import SlotBackend
from vehicle_agent.link import FakeLink
from vehicle_agent.transport import Chunks

GATEWAY = "body-gateway"  # sorts before ecu-main: the car names this ECU first in its reports
REPO = "http://ota.test/repo"


def _two_ecu_car(n: int, *, gateway: bool = True) -> dict[str, Any]:
    extra = [{"serial": f"G-{n:06d}", "hardware_id": GATEWAY, "installed_version": "3.0.0"}] if gateway else []
    return vehicle(vin(n), extra_ecus=extra)


async def _release(env: Env, hardware_id: str = "ecu-main", version: str = "1.1.0") -> int:
    resp = await upload(env.client, hardware_id=hardware_id, version=version)
    assert resp.status_code == 201, resp.text
    release_id: int = resp.json()["id"]
    return release_id


async def test_a_recall_names_one_release_per_hardware_id(either_env: Env) -> None:
    env = either_env
    cars = [_two_ecu_car(1), _two_ecu_car(2, gateway=False), vehicle(vin(3), hardware_id="other")]
    cars.append(vehicle(vin(4), hardware_id=GATEWAY, installed_version="3.0.0"))  # the second release's only
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 201, resp.text
    main, gateway = await _release(env), await _release(env, GATEWAY, "3.1.0")
    body = {**recall_body(main), "release_id": None, "release_ids": [main, gateway]}
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 201, resp.text
    recall = resp.json()
    assert recall["release_id"] == main and recall["release_ids"] == [main, gateway]
    assert recall["affected_count"] == 3  # a car with either hardware; the third has neither
    listed = await env.client.get(f"/api/v1/recalls/{recall['id']}")
    assert listed.json()["release_ids"] == [main, gateway]
    lookup = await env.client.get("/api/v1/public/recalls", params={"vin": vin(4)}, headers={"Authorization": ""})
    assert lookup.status_code == 200 and lookup.json()["open_recalls"] == 1, lookup.text  # the owner is told
    one = await env.client.post("/api/v1/recalls", json=recall_body(main, "24V-124"))
    assert one.status_code == 201 and one.json()["release_ids"] == [main]


async def test_a_second_release_of_one_hardware_id_is_refused(env: Env) -> None:
    first, second = await _release(env), await _release(env, version="1.2.0")
    body = {**recall_body(first), "release_ids": [first, second]}
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 422, resp.text
    assert "ecu-main" in resp.text and "at most one release per hardware id" in resp.text
    assert (await env.client.get("/api/v1/recalls")).json()["items"] == []
    repeated = await env.client.post("/api/v1/recalls", json={**recall_body(first), "release_ids": [first, first]})
    assert repeated.status_code == 422 and "more than once" in repeated.text
    outside = await env.client.post("/api/v1/recalls", json={**recall_body(first), "release_ids": [second]})
    assert outside.status_code == 422 and "not one of release_ids" in outside.text
    neither = await env.client.post("/api/v1/recalls", json={**recall_body(first), "release_id": None})
    assert neither.status_code == 422 and "release_id or release_ids" in neither.text


class ReaderTransport:
    """The agent's transport straight onto the server's :class:`RepoReader` (no HTTP): metadata and bundles."""

    def __init__(self, reader: RepoReader) -> None:
        self.reader = reader

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        path = url.removeprefix(REPO + "/")
        try:
            if path.startswith(repo_paths.IMAGE_METADATA):
                body = self.reader.image(path.removeprefix(repo_paths.IMAGE_METADATA))
            elif path.startswith(repo_paths.TARGETS):
                body = self.reader.target(path.removeprefix(repo_paths.TARGETS)).read_bytes()
            else:
                vin_, _, name = path.removeprefix("director/").partition("/metadata/")
                body = self.reader.director(vin_, name)
        except NotFound as exc:
            raise FetchError(url, "HTTP 404", 404) from exc
        yield Chunks(iter([body[start:]]), start)


class FailingOn:
    """The agent's own health check, except that one ECU never comes up healthy."""

    def __init__(self, serial: str) -> None:
        self.serial = serial

    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        if expected.ecu_serial == self.serial:
            return "gateway does not answer on CAN"
        return HeaderHealthCheck().check(slots, expected)


async def _two_release_campaign(env: Env, car: dict[str, Any], **recall: Any) -> tuple[int, bytes]:
    """Register and provision ``car``, file a recall of two releases (and ``recall``'s fields) and launch it.

    Returns (campaign id, the car's report key).
    """
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [car]})
    assert resp.status_code == 201, resp.text
    resp = await env.client.post(
        "/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": [car["vin"]]}
    )
    assert resp.status_code == 200, resp.text
    key: bytes = resp.json()["identities"][0]["report_private_key"].encode()
    main, gateway = await _release(env), await _release(env, GATEWAY, "3.1.0")
    body = {**recall_body(main), "release_ids": [main, gateway], **recall}
    filed = await env.client.post("/api/v1/recalls", json=body)
    assert filed.status_code == 201, filed.text
    launch = await env.client.post(f"/api/v1/recalls/{filed.json()['id']}/launch")
    assert launch.status_code == 201, launch.text
    campaign_id: int = launch.json()["id"]
    return campaign_id, key


def _agent(env: Env, car: dict[str, Any], key: bytes, state_dir: Path, **kwargs: Any) -> tuple[Agent, FakeLink]:
    rt = env.runtime
    config = AgentConfig(
        vin=car["vin"],
        ecus=tuple(EcuConfig(e["serial"], e["hardware_id"], e["installed_version"]) for e in car["ecus"]),
        mqtt_url="mqtt://unused",
        repo_url=REPO,
        state_dir=state_dir,
        image_root=rt.image_root,
        director_root=rt.director_root,
        report_key=key,
    )
    link = FakeLink(car["vin"])
    return Agent(config, link=link, transport=ReaderTransport(rt.repo_reader), retries=0, **kwargs), link


async def _run(env: Env, agent: Agent, link: FakeLink, vin_: str) -> list[StatusReport]:
    """Hand the car its notice, let it work, and deliver its reports to the server."""
    notice = next(
        m
        for m in (parse_campaign_message(p.payload) for p in env.publisher.messages)
        if isinstance(m, CampaignNotice) and m.vin == vin_
    )
    await agent.handle(notice)
    await env.inject(*((topics.status_topic(vin_), encode(r)) for r in link.reports))
    return link.reports


async def test_a_two_ecu_recall_remedies_the_car_with_both_ecus_in_one_metadata(
    either_env: Env, tmp_path: Path
) -> None:
    env = either_env
    env.clock.now = datetime.now(UTC)  # the agent checks expiry against the real time
    car = _two_ecu_car(1)
    campaign_id, key = await _two_release_campaign(env, car)
    await env.runtime.dispatcher.idle()
    agent, link = _agent(env, car, key, tmp_path)
    reports = await _run(env, agent, link, car["vin"])
    assert reports[-1].state is ReportState.REMEDIED, reports[-1]
    director = Metadata[Targets].from_bytes(env.runtime.repo_reader.director(car["vin"], "targets.json"))
    assigned = {t.custom["ecu_serial"]: t.custom["version"] for t in director.signed.targets.values()}
    assert assigned == {"S-000001": "1.1.0", "G-000001": "3.1.0"}  # both ECUs, one targets metadata
    assert agent.journal.data.installed["S-000001"][0] == "1.1.0"
    assert agent.journal.data.installed["G-000001"][0] == "3.1.0"
    progress = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/progress")).json()
    assert progress["done"] and progress["counts"]["remedied"] == 1, progress
    by_hardware = {e["hardware_id"]: e for e in progress["ecus"]}
    assert set(by_hardware) == {"ecu-main", GATEWAY}  # the car and each of its ECUs counted
    assert all(e["ecus"] == 1 and e["counts"]["remedied"] == 1 and e["failed_here"] == 0 for e in by_hardware.values())
    counts_only = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/progress", params={"ecus": "false"})).json()
    assert counts_only == {**progress, "ecus": []}  # a poller of the counts: everything but the per-ECU joins
    recall_id = (await env.client.get(f"/api/v1/campaigns/{campaign_id}")).json()["recall_id"]
    report = (await env.client.get(f"/api/v1/reports/recalls/{recall_id}/completion")).json()
    assert report["summary"]["involved"] == report["summary"]["remedied_ota"] == 1  # per car ...
    each = {"involved": 1, "remedied": 1, "failed": 0}
    assert report["summary"]["ecus_by_hardware"] == {GATEWAY: each, "ecu-main": each}  # ... and per ECU


async def test_a_failing_ecu_rolls_every_ecu_of_the_car_back_and_is_named(env: Env, tmp_path: Path) -> None:
    env.clock.now = datetime.now(UTC)
    car = _two_ecu_car(2)
    campaign_id, key = await _two_release_campaign(env, car)
    await env.runtime.dispatcher.idle()
    agent, link = _agent(env, car, key, tmp_path, health=FailingOn("G-000002"))
    reports = await _run(env, agent, link, car["vin"])
    assert reports[-1].state is ReportState.ROLLED_BACK and "G-000002" in reports[-1].detail, reports[-1]
    for serial, old in (("S-000002", "1.0.0"), ("G-000002", "3.0.0")):  # all or nothing: both on the old image
        slots = agent.slots[serial]
        assert slots.booted_slot() == slots.active_slot() and slots.pending_try() is None
        assert agent.journal.data.installed[serial][0] == old
    status = (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()
    last = status["campaigns"][0]
    assert last["campaign_id"] == campaign_id and last["state"] == "rolled_back", last
    assert "G-000002" in (last.get("detail") or "")
    progress = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/progress")).json()
    failed_here = {e["hardware_id"]: (e["counts"]["rolled_back"], e["failed_here"]) for e in progress["ecus"]}
    assert failed_here == {"ecu-main": (1, 0), GATEWAY: (1, 1)}  # both ECUs back; the gateway is the one that failed


async def test_the_failure_breakdown_names_the_failing_ecu_and_counts_each_car_once(env: Env, tmp_path: Path) -> None:
    env.clock.now = datetime.now(UTC)
    car = _two_ecu_car(3)
    campaign_id, key = await _two_release_campaign(env, car)
    await env.runtime.dispatcher.idle()
    agent, link = _agent(env, car, key, tmp_path, health=FailingOn("G-000003"))
    await _run(env, agent, link, car["vin"])
    dashboard = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/dashboard")).json()
    assert (dashboard["hardware_id"], dashboard["release_version"]) == (f"ecu-main, {GATEWAY}", "1.1.0, 3.1.0")
    failures = dashboard["failures"]
    assert failures["total"] == 1
    assert [(s["value"], s["failures"]) for s in failures["by_model"]] == [("Sedan", 1)]  # one car, two ECUs
    assert [(s["value"], s["failures"]) for s in failures["by_failed_ecu"]] == [(GATEWAY, 1)]
    assert {s["value"] for s in failures["by_hardware_id"]} == {"ecu-main", GATEWAY}
    assert [(c["vin"], c["failed_ecu"]) for c in failures["recent"]] == [(car["vin"], "G-000003")]


class GatewayBundleMissing(ReaderTransport):
    """The repository answers 404 for the gateway's bundle: the car fails downloading that ECU's image."""

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        path = url.removeprefix(REPO + "/")
        if path.startswith(repo_paths.TARGETS) and GATEWAY in path:
            raise FetchError(url, "HTTP 404", 404)
        with super().stream(url, start=start) as chunks:
            yield chunks


async def test_the_failing_ecu_is_read_from_the_reports_ecu_serial(env: Env, tmp_path: Path) -> None:
    """A download failure's detail names no ECU ('ECU <serial>:'); the report's ecu_serial does."""
    env.clock.now = datetime.now(UTC)
    car = _two_ecu_car(4)
    campaign_id, key = await _two_release_campaign(env, car)
    await env.runtime.dispatcher.idle()
    agent, link = _agent(env, car, key, tmp_path)
    agent = Agent(agent.config, link=link, transport=GatewayBundleMissing(env.runtime.repo_reader), retries=0)
    reports = await _run(env, agent, link, car["vin"])
    failed = reports[-1]
    assert failed.state is ReportState.FAILED and failed.ecu_serial == "G-000004", failed
    assert "ECU G-000004:" not in failed.detail and "ECU S-000004:" not in failed.detail
    progress = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/progress")).json()
    failed_here = {e["hardware_id"]: (e["counts"]["failed"], e["failed_here"]) for e in progress["ecus"]}
    assert failed_here == {"ecu-main": (1, 0), GATEWAY: (1, 1)}
    failures = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/dashboard")).json()["failures"]
    assert [(s["value"], s["failures"]) for s in failures["by_failed_ecu"]] == [(GATEWAY, 1)]
    assert [(c["vin"], c["failed_ecu"]) for c in failures["recent"]] == [(car["vin"], "G-000004")]


async def test_the_r156_record_covers_every_release_of_a_multi_ecu_recall(env: Env, tmp_path: Path) -> None:
    """Per VIN and per affected ECU (each release's hardware): versions and RXSWIN before and after, outcome."""
    env.clock.now = datetime.now(UTC)
    car = _two_ecu_car(5)
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [car]})
    assert resp.status_code == 201, resp.text
    resp = await env.client.post(
        "/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": [car["vin"]]}
    )
    assert resp.status_code == 200, resp.text
    key: bytes = resp.json()["identities"][0]["report_private_key"].encode()
    ids = []
    for hardware_id, version, rxswin in (("ecu-main", "1.1.0", "R156-MAIN-2"), (GATEWAY, "3.1.0", "R156-GW-2")):
        files = {"file": ("fix.otab", bundle_bytes(hardware_id, version, 2), "application/octet-stream")}
        data = {"hardware_id": hardware_id, "version": version, "release_counter": "2", "rxswin": rxswin}
        release = await env.client.post("/api/v1/releases", files=files, data=data)
        assert release.status_code == 201, release.text
        ids.append(release.json()["id"])
    recall = await env.client.post("/api/v1/recalls", json={**recall_body(ids[0]), "release_ids": ids})
    assert recall.status_code == 201, recall.text
    launch = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert launch.status_code == 201, launch.text
    await env.runtime.dispatcher.idle()
    agent, link = _agent(env, car, key, tmp_path)
    assert (await _run(env, agent, link, car["vin"]))[-1].state is ReportState.REMEDIED
    body = (await env.client.get(f"/api/v1/reports/recalls/{recall.json()['id']}/type-approval?format=json")).json()
    rows = {row["ecu_serial"]: row for row in body["rows"]}
    assert set(rows) == {"S-000005", "G-000005"}, body["rows"]
    expected = {
        "S-000005": ("ecu-main", "1.1.0", "1.0.0", "1.1.0", "R156-MAIN-2"),
        "G-000005": (GATEWAY, "3.1.0", "3.0.0", "3.1.0", "R156-GW-2"),
    }
    for serial, (hardware_id, release_version, before, after, rxswin) in expected.items():
        row = rows[serial]
        assert (row["vin"], row["hardware_id"], row["ecu_hardware_id"]) == (car["vin"], hardware_id, hardware_id)
        assert (row["release_version"], row["version_before"], row["version_after"]) == (release_version, before, after)
        assert (row["rxswin"], row["rxswin_before"], row["rxswin_after"]) == (rxswin, "none declared", rxswin)
        assert row["outcome"] == "remedied" and row["install_time"] and row["check"] == "compatible"
    update = body["meta"]["update"] if "meta" in body else body["update"]
    assert update["affected_systems"] == sorted(["ecu-main", GATEWAY])
    assert sorted(r["hardware_id"] for r in update["releases"]) == sorted(["ecu-main", GATEWAY])
    assert sorted(update["rxswin"]) == ["R156-GW-2", "R156-MAIN-2"]
    assert body["summary"]["target_vins"] == 1 and body["summary"]["ecus_checked"] == 2


async def test_keep_successful_keeps_the_healthy_ecu_on_the_fix_and_the_car_is_failed(env: Env, tmp_path: Path) -> None:
    """The recall's keep_successful policy, signed in the Director's targets: only the failing ECU goes back."""
    env.clock.now = datetime.now(UTC)
    car = _two_ecu_car(6)
    campaign_id, key = await _two_release_campaign(env, car, ecu_failure_policy="keep_successful")
    recall_id = (await env.client.get(f"/api/v1/campaigns/{campaign_id}")).json()["recall_id"]
    recall = (await env.client.get(f"/api/v1/recalls/{recall_id}")).json()
    assert recall["ecu_failure_policy"] == "keep_successful"
    await env.runtime.dispatcher.idle()
    agent, link = _agent(env, car, key, tmp_path, health=FailingOn("G-000006"))
    reports = await _run(env, agent, link, car["vin"])
    director = Metadata[Targets].from_bytes(env.runtime.repo_reader.director(car["vin"], "targets.json"))
    assert {t.custom["ecu_failure_policy"] for t in director.signed.targets.values()} == {"keep_successful"}
    failed = reports[-1]
    assert (failed.state, failed.ecu_serial) == (ReportState.FAILED, "G-000006"), failed
    assert agent.journal.data.installed["S-000006"][0] == "1.1.0"  # kept the fix
    assert agent.journal.data.installed["G-000006"][0] == "3.0.0"  # back on its old image
    for serial in ("S-000006", "G-000006"):
        slots = agent.slots[serial]
        assert slots.booted_slot() == slots.active_slot() and slots.pending_try() is None
    await env.inject(*((topics.status_topic(car["vin"]), encode(m)) for m in link.manifests))
    vehicle_ecus = {e["serial"]: e for e in (await env.client.get(f"/api/v1/vehicles/{car['vin']}")).json()["ecus"]}
    assert (vehicle_ecus["S-000006"]["installed_version"], vehicle_ecus["G-000006"]["installed_version"]) == (
        "1.1.0",
        "3.0.0",
    )  # the mixed state, as the car's manifest says
    progress = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/progress")).json()
    assert progress["counts"]["failed"] == 1 and progress["counts"]["remedied"] == 0, progress["counts"]
    by_hardware = {e["hardware_id"]: (e["counts"]["failed"], e["failed_here"], e["on_fix"]) for e in progress["ecus"]}
    assert by_hardware == {"ecu-main": (1, 0, 1), GATEWAY: (1, 1, 0)}  # the main ECU runs the fix, the gateway failed
