"""The owner's look-up in a real browser: the car, the recall and whom to call, on a laptop and a phone, in Italian.

The server runs in-process on a real socket (SQLite, a recording publisher instead of a
broker) with a manufacturer name and a dealer locator configured; one car is registered
and a recall launched for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from ota_server.config import Settings
from ota_server.http.server import OtaServer
from ota_server.mqtt.publisher import FakePublisher
from tests.browser.conftest import VIEWPORT, PageProblems, shot
from tests.ota_server.helpers import bundle_bytes, recall_body, vehicle, vin

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

HANG_GUARD_S = 120.0  # a bound on a broken run, not a timing check
PHONE: ViewportSize = {"width": 375, "height": 740}
CAR = vin(1)
DEALERS = "https://dealers.example.com/find"


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        settings = Settings(
            data_dir=tmp_path / "server",
            host="127.0.0.1",
            port=0,
            manufacturer_name="Acme Motors",
            dealer_locator_url=DEALERS,
        )
        async with OtaServer(settings, publisher=FakePublisher()) as info:
            box["url"] = info.api_url
            ready.set()
            await asyncio.to_thread(stop.wait)

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # surfaced below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="ota-server", daemon=True)
    thread.start()
    assert ready.wait(HANG_GUARD_S), "the server did not start"
    if "error" in box:
        raise box["error"]
    try:
        _file_a_recall(box["url"], (tmp_path / "server" / "admin-token").read_text().strip())
        yield box["url"]
    finally:
        stop.set()
        thread.join(HANG_GUARD_S)


def _file_a_recall(url: str, token: str) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as admin:
        assert admin.post("/api/v1/vehicles", json=vehicle(CAR)).status_code == 201
        release = admin.post(
            "/api/v1/releases",
            files={"file": ("fix.otab", bundle_bytes(), "application/octet-stream")},
            data={"hardware_id": "ecu-main", "version": "1.1.0", "release_counter": "2"},
        )
        assert release.status_code == 201, release.text
        recall = admin.post("/api/v1/recalls", json=recall_body(release.json()["id"]))
        assert recall.status_code == 201, recall.text
        assert admin.post(f"/api/v1/recalls/{recall.json()['id']}/launch").status_code == 201


def _open(browser: Browser, base: str, path: str, viewport: ViewportSize, lang: str) -> tuple[Page, PageProblems]:
    context = browser.new_context(viewport=viewport, locale=lang)
    page = context.new_page()
    problems = PageProblems(page, base)
    page.goto(base + path)
    return page, problems


def test_lookup_shows_the_car_and_a_person_on_a_laptop_and_a_phone(browser: Browser, base_url: str) -> None:
    page, problems = _open(browser, base_url, "/lookup", VIEWPORT, "en-GB")
    page.fill("#vin", CAR.lower())
    page.click("button[type=submit]")
    page.wait_for_selector("#car")
    assert page.inner_text("#car") == "Acme Sedan, model year 2022"
    assert "Manufacturer: Acme Motors" in page.inner_text("#vehicle")
    contact = page.inner_text(".recall .contact")
    assert "Dana Smith" in contact and "Recall coordinator" in contact and "+1 555 0100" in contact
    assert page.get_attribute("#dealer-locator", "href") == DEALERS
    assert "recalls of Acme Motors registered with this service" in page.inner_text("#coverage")
    assert problems.errors == [] and problems.foreign == []
    shot(page, "lookup-desktop")

    phone, phone_problems = _open(browser, base_url, f"/lookup?vin={CAR}", PHONE, "en-GB")
    assert phone.inner_text("#car") == "Acme Sedan, model year 2022"
    assert "Dana Smith" in phone.inner_text(".recall .contact")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
    assert phone_problems.errors == []
    shot(phone, "lookup-phone")


def test_lookup_speaks_italian_with_accept_language_it(browser: Browser, base_url: str) -> None:
    page, problems = _open(browser, base_url, f"/lookup?vin={CAR}", PHONE, "it-IT")
    assert page.get_attribute("html", "lang") == "it"
    assert page.inner_text("h1") == "Il tuo veicolo è interessato da un richiamo?"
    assert page.inner_text("#car") == "Acme Sedan, anno modello 2022"
    assert "Domande? Chiama o scrivi a" in page.inner_text(".recall .contact")
    assert page.inner_text("#dealer-locator") == "Trova un concessionario vicino a te"
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert problems.errors == []
    shot(page, "lookup-italian")
