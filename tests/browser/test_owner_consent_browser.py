"""The owner page in a real browser: the owner clicks accept, and the car installs exactly that hash.

The server runs in-process on a real socket (SQLite, a recording publisher instead of a
broker); the real agent, in its own thread, fetches over HTTP and waits at its gate (the
head unit never answers) until the owner's answer arrives in its signed Director metadata.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from firmware_bundles.messages import CampaignNotice, ReportState, parse_campaign_message
from ota_server.config import Settings
from ota_server.http.server import OtaServer, ServerInfo
from ota_server.mqtt.publisher import FakePublisher
from tests.browser.conftest import VIEWPORT, PageProblems, shot
from tests.ota_server.helpers import bundle_bytes, recall_body, vehicle, vin
from tests.ota_server.test_owner_consent import OWNER_NOTICE
from vehicle_agent.agent import Agent
from vehicle_agent.config import AgentConfig, EcuConfig, VehicleOptions
from vehicle_agent.link import FakeLink
from vehicle_agent.owner import Consent, ScriptedOwner
from vehicle_agent.transport import HttpxTransport

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ViewportSize

HANG_GUARD_S = 120.0  # a bound on a broken run, not a timing check
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class Server:
    info: ServerInfo
    publisher: FakePublisher
    admin: httpx.Client


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    publisher = FakePublisher()
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        settings = Settings(data_dir=tmp_path / "server", host="127.0.0.1", port=0, scheduler_report_gap_s=0)
        async with OtaServer(settings, publisher=publisher) as info:
            box["info"] = info
            ready.set()
            await asyncio.to_thread(stop.wait)

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # surfaced by the fixture below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="ota-server", daemon=True)
    thread.start()
    assert ready.wait(HANG_GUARD_S), "the server did not start"
    if "error" in box:
        raise box["error"]
    info: ServerInfo = box["info"]
    token = (tmp_path / "server" / "admin-token").read_text().strip()
    with httpx.Client(base_url=info.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as admin:
        yield Server(info, publisher, admin)
    stop.set()
    thread.join(HANG_GUARD_S)


def launch(server: Server, car: dict[str, Any]) -> tuple[bytes, CampaignNotice]:
    admin = server.admin
    assert admin.post("/api/v1/vehicles", json=car).status_code == 201
    resp = admin.post("/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": [car["vin"]]})
    assert resp.status_code == 200, resp.text
    key: bytes = resp.json()["identities"][0]["report_private_key"].encode()
    release = admin.post(
        "/api/v1/releases",
        files={"file": ("fix.otab", bundle_bytes(), "application/octet-stream")},
        data={"hardware_id": car["ecus"][0]["hardware_id"], "version": "1.1.0", "release_counter": "2"},
    )
    assert release.status_code == 201, release.text
    body = {**recall_body(release.json()["id"]), "requires_consent": True, "owner_notice": OWNER_NOTICE}
    filed = admin.post("/api/v1/recalls", json=body)
    assert filed.status_code == 201, filed.text
    assert admin.post(f"/api/v1/recalls/{filed.json()['id']}/launch").status_code == 201
    for _ in range(2000):  # published by the dispatcher in the server's thread
        notices = [parse_campaign_message(m.payload) for m in list(server.publisher.messages)]
        found = [n for n in notices if isinstance(n, CampaignNotice) and n.vin == car["vin"]]
        if found:
            return key, found[0]
        threading.Event().wait(0.05)
    raise AssertionError("no notice published")


def test_the_owner_accepts_in_the_browser_and_the_car_installs_exactly_that_hash(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    car = vehicle(vin(7))
    key, notice = launch(server, car)
    assert notice.owner_url is not None and notice.owner_url.startswith(server.info.api_url + "/owner/")

    config = AgentConfig(
        vin=car["vin"],
        ecus=(EcuConfig(car["ecus"][0]["serial"], car["ecus"][0]["hardware_id"], "1.0.0"),),
        mqtt_url="mqtt://unused",
        repo_url=server.info.repo_url,
        state_dir=tmp_path / "car",
        image_root=server.admin.get("/repo/image/metadata/1.root.json").content,
        director_root=server.admin.get(f"/repo/director/{car['vin']}/metadata/1.root.json").content,
        report_key=key,
        vehicle=VehicleOptions(retry_interval=0.2, retry_jitter=0.0),
    )
    head_unit = ScriptedOwner([Consent.POSTPONE])
    outcome: dict[str, Any] = {}

    def drive() -> None:
        with httpx.Client(timeout=30) as client:
            agent = Agent(config, link=FakeLink(car["vin"]), transport=HttpxTransport(client), owner=head_unit)
            outcome["state"] = asyncio.run(agent.handle(notice))
            outcome["installed"] = agent.journal.data.images[car["ecus"][0]["serial"]].sha256

    driving = threading.Thread(target=drive, name="car", daemon=True)
    driving.start()

    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    problems = PageProblems(page, server.info.api_url)
    page.goto(notice.owner_url)
    hash_shown = page.locator("#images code.hash").first.inner_text()
    assert "1.1.0" in page.locator("#images").inner_text()
    assert "Smoother regenerative braking" in page.locator("#purpose").inner_text()
    shot(page, "owner-page-desktop")
    phone = browser.new_context(viewport=PHONE)
    phone_page = phone.new_page()
    phone_page.goto(notice.owner_url)
    assert phone_page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
    shot(phone_page, "owner-page-phone")
    phone.close()

    page.locator("#accept").click()
    page.wait_for_selector("#answered")
    assert "You accepted this update" in page.locator("#answered").inner_text()
    assert not problems.errors and not problems.foreign, (problems.errors, problems.foreign)
    context.close()

    driving.join(HANG_GUARD_S)
    assert not driving.is_alive(), "the car never got the owner's answer"
    assert outcome["state"] is ReportState.REMEDIED
    assert outcome["installed"] == hash_shown  # exactly the image the owner saw and accepted
    assert head_unit.offers and {o.images[0].sha256 for o in head_unit.offers} == {hash_shown}  # asked in the car too
