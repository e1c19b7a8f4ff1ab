"""The owner's look-up page, rendered on the server: the car, what happened, whom to call, in English or Italian."""

from __future__ import annotations

import re
import string
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ota_server.web import i18n
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.test_web import CAR_FAILS, CAR_OK, _recall_run

DEALERS = "https://dealers.example.com/find"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path, manufacturer_name="Acme Motors", dealer_locator_url=DEALERS)
    async with running(settings) as env:
        yield env


@pytest.fixture
async def owner(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """No token: the owner's browser."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://ota.test") as client:
        yield client


def test_both_catalogs_have_the_same_keys_and_placeholders() -> None:
    assert set(i18n.EN) == set(i18n.IT)
    for key, english in i18n.EN.items():
        assert sorted(_fields(english)) == sorted(_fields(i18n.IT[key])), key


def _fields(message: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(message) if name]


def test_the_language_follows_accept_language_and_the_override() -> None:
    assert i18n.choose("it-IT,it;q=0.9,en;q=0.8") == "it"
    assert i18n.choose("de-DE, en;q=0.5, it;q=0.7") == "it"  # the best we speak
    assert i18n.choose("de-DE") == i18n.choose(None) == "en"
    assert i18n.choose("it;q=0, en;q=0.1") == "en"  # q=0 means "not this one"
    assert i18n.choose("it", override="en") == "en" and i18n.choose("en", override="xx") == "en"


async def test_a_failed_update_says_what_happened_once_with_the_car_and_a_person(
    env: Env, owner: httpx.AsyncClient
) -> None:
    await _recall_run(env)
    page = await owner.get("/lookup", params={"vin": CAR_FAILS})
    assert page.status_code == 200 and page.headers["content-language"] == "en"
    html = page.text
    assert "Acme Sedan, model year 2022" in html and "Manufacturer: Acme Motors" in html
    assert "The update was tried on 2026-03-01; your vehicle went back to its previous software." in html
    shown = re.sub(r"<[^>]+>", " ", html)
    assert shown.count("dealer") == 2, shown  # what to do (said once) and the dealer locator's link
    assert f'href="{DEALERS}"' in html
    assert 'class="contact-name">Dana Smith</strong> (Recall coordinator)' in html
    assert 'href="tel:+15550100"' in html and 'href="mailto:recalls@example.com"' in html
    assert "recalls of Acme Motors registered with this service" in html
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in html


async def test_italian_with_accept_language(env: Env, owner: httpx.AsyncClient) -> None:
    await _recall_run(env)
    page = await owner.get("/lookup", params={"vin": CAR_OK}, headers={"Accept-Language": "it-IT,it;q=0.9"})
    assert page.status_code == 200 and page.headers["content-language"] == "it"
    assert '<html lang="it">' in page.text and "Il tuo veicolo è interessato da un richiamo?" in page.text
    assert "Acme Sedan, anno modello 2022" in page.text and "Risolto" in page.text
    assert "L&#x27;aggiornamento è stato installato il 2026-03-01" in page.text
    english = await owner.get("/lookup", params={"vin": CAR_OK, "lang": "en"}, headers={"Accept-Language": "it"})
    assert '<html lang="en">' in english.text and "Fixed" in english.text


async def test_an_unknown_vin_is_told_what_the_check_covers(owner: httpx.AsyncClient) -> None:
    page = await owner.get("/lookup", params={"vin": CAR_OK})
    assert "We have no record of this vehicle. That is not the same as &#x27;no recall&#x27;" in page.text
    assert "model year" not in page.text


async def test_a_bad_vin_and_markup_are_answered_escaped(owner: httpx.AsyncClient) -> None:
    page = await owner.get("/lookup", params={"vin": "<script>x</script>"}, headers={"Accept-Language": "it"})
    assert page.status_code == 422 and "Questo non è un VIN valido" in page.text
    assert "<script>x" not in page.text and "&lt;script&gt;x" in page.text
    empty = await owner.get("/lookup")
    assert empty.status_code == 200 and 'id="result" aria-live="polite"></div>' in empty.text


async def test_an_untidy_vin_is_shown_in_the_address_as_written(owner: httpx.AsyncClient) -> None:
    moved = await owner.get("/lookup", params={"vin": f" {CAR_OK.lower()} ", "lang": "it"})
    assert moved.status_code == 303 and moved.headers["location"] == f"/lookup?vin={CAR_OK}&lang=it"
    page = await owner.get(moved.headers["location"])
    assert '<input type="hidden" name="lang" value="it">' in page.text  # the next check stays in Italian
