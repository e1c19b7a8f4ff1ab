"""`ota vehicles list|show|update|decommission` against the in-process server (through its REST API)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from unittest import mock

import httpx
import pytest

from ota_server.cli import common as cli_common
from ota_server.cli import vehicles as cli_vehicles
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, vehicle, vin
from tests.ota_server.test_cli_ops import LoopTransport, ota


@pytest.fixture
async def cli_env(env: Env, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    monkeypatch.setattr(
        cli_common, "transport_override", LoopTransport(httpx.ASGITransport(app=env.app), asyncio.get_running_loop())
    )
    monkeypatch.delenv("OTA_TOKEN", raising=False)
    monkeypatch.delenv("OTA_SERVER", raising=False)
    yield env


async def test_list_walks_every_page_with_filters(cli_env: Env) -> None:
    env = cli_env
    sedans = [vin(n) for n in range(1, 8)]
    cars = [vehicle(v) for v in sedans] + [vehicle(vin(50), model="Wagon")]
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})).status_code == 201
    with mock.patch.object(cli_vehicles, "PAGE", 3):  # several pages for a few cars
        result = await ota(env, "vehicles", "list", "--model", "Sedan", "--since", "2026-01-01", "--json")
    assert result.exit_code == 0, result.output
    assert [car["vin"] for car in json.loads(result.output)] == sorted(sedans)
    none = await ota(env, "vehicles", "list", "--discrepancy", "any", "--json")
    assert none.exit_code == 0 and json.loads(none.output) == []
    capped = await ota(env, "vehicles", "list", "--max", "2", "--json")
    assert len(json.loads(capped.output)) == 2
    human = await ota(env, "vehicles", "list", "--model", "Wagon")
    assert human.exit_code == 0 and vin(50) in human.output and "1 vehicle(s)" in human.output
    assert "ecu-main 1.0.0 (declared)" in human.output  # no manifest yet: registration's word, labelled


async def test_show_update_and_decommission(cli_env: Env) -> None:
    env = cli_env
    vins = [vin(1), vin(2)]
    campaign = await launched(env.client, vins)
    car = vins[0]
    updated = await ota(env, "vehicles", "update", car, "--time-zone", "Europe/Berlin", "--market", "DE")
    assert updated.exit_code == 0, updated.output
    assert "market DE" in updated.output and "time_zone Europe/Berlin" in updated.output
    corrected = await ota(env, "vehicles", "update", car, "--model-year", "2021", "--json")
    assert corrected.exit_code == 0, corrected.output
    assert json.loads(corrected.output)["model_year"] == 2021
    refused = await ota(env, "vehicles", "update", car, "--time-zone", "Mars/Olympus")
    assert refused.exit_code == 1 and "422" in refused.output
    nothing = await ota(env, "vehicles", "update", car)
    assert nothing.exit_code == 2
    gone = await ota(env, "vehicles", "decommission", car, "--reason", "scrapped")
    assert gone.exit_code == 0, gone.output
    assert f"unreachable in campaign(s): {campaign['id']}" in gone.output
    shown = await ota(env, "vehicles", "show", car, "--json")
    body = json.loads(shown.output)
    assert (body["market"], body["time_zone"], body["decommission_reason"]) == ("DE", "Europe/Berlin", "scrapped")
    assert [(c["campaign_id"], c["state"], c["reason"]) for c in body["campaigns"]] == [
        (campaign["id"], "unreachable", "scrapped")
    ]
    human = await ota(env, "vehicles", "show", car)
    assert human.exit_code == 0 and "decommissioned: scrapped" in human.output
    twice = await ota(env, "vehicles", "decommission", car, "--reason", "stolen")
    assert twice.exit_code == 1 and "409" in twice.output
    listed = await ota(env, "vehicles", "list", "--in-service", "--json")
    assert [c["vin"] for c in json.loads(listed.output)] == [vins[1]]
