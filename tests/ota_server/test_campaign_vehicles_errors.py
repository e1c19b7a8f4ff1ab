"""The ``errors`` word of a campaign's car list: failed, rolled_back and timed_out (the progress summary's failed)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

import httpx

from firmware_bundles.messages import FailureReason
from firmware_bundles.messages import ReportState as S
from ota_server.domain.states import ERRORS, VinState
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, report, vin
from tests.ota_server.test_cli_ops import ota, wired  # noqa: F401  (the fixture)
from tests.ota_server.test_web import _login, public  # noqa: F401  (the fixture)

CARS = [vin(n) for n in range(1, 4)]


async def _rolled_back(env: Env) -> tuple[int, str]:
    """Three cars notified; one of them rolled back (no car failed)."""
    campaign = await launched(env.client, CARS)
    cid: int = campaign["id"]
    nonces = await env.nonces()
    car = sorted(nonces)[0]
    await env.inject(
        report(cid, car, nonces[car], S.NOTIFIED),
        report(cid, car, nonces[car], S.ROLLED_BACK, reason=FailureReason.HEALTH_CHECK_FAILED),
    )
    return cid, car


async def _vins(env: Env, cid: int, **params: Any) -> list[str]:
    resp = await env.client.get(f"/api/v1/campaigns/{cid}/vehicles", params=params)
    assert resp.status_code == 200, resp.text
    return [row["vin"] for row in resp.json()["items"]]


async def test_a_rolled_back_car_is_listed_under_errors_not_under_failed(env: Env) -> None:
    cid, car = await _rolled_back(env)
    assert await _vins(env, cid, state="failed") == []
    assert await _vins(env, cid, state="errors") == [car]
    assert await _vins(env, cid, state="rolled_back") == [car]
    assert sorted(await _vins(env, cid, state=["errors", "pending", "notified"])) == sorted(CARS)
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    counts = progress["counts"]
    assert isinstance(counts, dict) and sum(counts[s.value] for s in ERRORS) == 1  # the same car, the same count
    export = await env.client.get(f"/api/v1/campaigns/{cid}/vehicles", params={"state": "errors", "format": "csv"})
    assert export.status_code == 200 and len(export.text.splitlines()) == 2 and car in export.text
    bad = await env.client.get(f"/api/v1/campaigns/{cid}/vehicles", params={"state": "broken"})
    assert bad.status_code == 422 and "state" in bad.text
    # the fleet list's state filter takes the same words
    for word, expected in (("failed", []), ("errors", [car])):
        fleet = await env.client.get("/api/v1/vehicles", params={"campaign": cid, "state": word})
        assert fleet.status_code == 200 and [c["vin"] for c in fleet.json()["items"]] == expected, fleet.text


async def test_the_state_filter_declares_every_state_and_errors(env: Env) -> None:
    spec = env.app.openapi()
    operation = spec["paths"]["/api/v1/campaigns/{campaign_id}/vehicles"]["get"]
    (state,) = [p for p in operation["parameters"] if p["name"] == "state"]
    (array,) = [s for s in state["schema"]["anyOf"] if s.get("type") == "array"]
    words = spec["components"]["schemas"][array["items"]["$ref"].rsplit("/", 1)[-1]]["enum"]
    assert sorted(words) == sorted([*(s.value for s in VinState), "errors"])  # one enum: each state, then errors
    assert "errors" in state["description"] and "rolled_back" in state["description"]


async def test_cli_lists_errors_and_hints_at_them_when_failed_finds_none(wired: Env) -> None:  # noqa: F811
    cid, car = await _rolled_back(wired)
    errors = await ota(wired, "campaigns", "vehicles", str(cid), "--state", "errors", "--json")
    assert errors.exit_code == 0, errors.output
    assert [c["vin"] for c in json.loads(errors.stdout)] == [car]
    failed = await ota(wired, "campaigns", "vehicles", str(cid), "--state", "failed", "--json")
    assert failed.exit_code == 0, failed.output
    assert json.loads(failed.stdout) == []
    assert "no cars in state failed; 1 car in rolled_back: use --state errors" in failed.stderr
    found = await ota(wired, "campaigns", "vehicles", str(cid), "--state", "rolled_back")
    assert found.exit_code == 0 and "use --state errors" not in found.stderr
    pending = await ota(wired, "campaigns", "vehicles", str(cid), "--state", "withdrawn")
    assert pending.exit_code == 0 and "use --state errors" not in pending.stderr  # not an error state: no hint
    bad = await ota(wired, "campaigns", "vehicles", str(cid), "--state", "broken")
    assert bad.exit_code != 0 and "errors" in bad.output
    helped = await ota(wired, "campaigns", "vehicles", "--help")
    assert "errors" in helped.output and "rolled_back" in helped.output and "timed_out" in helped.output


class _Options(HTMLParser):
    """The options of the select with id ``f-state``: (value, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[tuple[str, str]] = []
        self._inside = False
        self._value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "select":
            self._inside = found.get("id") == "f-state"
        elif tag == "option" and self._inside:
            self._value = found.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._value is not None:
            self.options.append((self._value, data.strip()))
            self._value = None


async def test_the_campaign_page_offers_errors_in_the_state_filter(
    env: Env,
    public: httpx.AsyncClient,  # noqa: F811
) -> None:
    await _login(env, public)
    page = await public.get("/ui/campaigns/1")
    assert page.status_code == 200
    parser = _Options()
    parser.feed(page.text)
    assert ("errors", "errors (failed, rolled back, timed out)") in parser.options
