"""One VIN rule at every entry point: a lower-case, space-padded VIN is the same car through the API
(path, body, query), the CSV import and the CLI, stored and answered in its normal form; a malformed
one is refused alike."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import normalize_vin, validate_vin
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import vehicle, vin
from tests.ota_server.test_cli_ops import ota, wired, write_csv

__all__ = ["wired"]  # the CLI fixture, used by name below


def untidy(value: str) -> str:
    """How a person types it: lower case, white space around it."""
    return f"  {value.lower()}\t"


def test_normalize_vin_is_the_rule_validate_vin_applies() -> None:
    car = vin(1)
    assert normalize_vin(untidy(car)) == car
    assert validate_vin(untidy(car)) == car
    with pytest.raises(InvalidVin):
        validate_vin(car[:8] + " " + car[9:])  # a space inside is not padding


async def test_api_body_path_and_query_take_an_untidy_vin(env: Env) -> None:
    car = vin(11)
    created = await env.client.post("/api/v1/vehicles", json=vehicle(untidy(car)))
    assert created.status_code == 201, created.text
    assert created.json()["vin"] == car
    shown = await env.client.get(f"/api/v1/vehicles/{quote(untidy(car))}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["vin"] == car
    status = await env.client.get(f"/api/v1/vehicles/{quote(untidy(car))}/status")
    assert status.status_code == 200, status.text
    filtered = await env.client.get("/api/v1/discrepancies", params={"vin": untidy(car)})
    assert filtered.status_code == 200, filtered.text
    provisioned = await env.client.post(
        "/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": [untidy(car)]}
    )
    assert provisioned.status_code == 200, provisioned.text
    assert [identity["vin"] for identity in provisioned.json()["identities"]] == [car]
    again = await env.client.post("/api/v1/vehicles", json=vehicle(car))
    assert again.status_code == 409, again.text  # the same car, however it was typed


async def test_a_malformed_vin_is_refused_at_every_api_entry_point(env: Env) -> None:
    car = vin(12)
    inside = car[:8] + " " + car[9:]  # 17 characters but a space inside
    body = await env.client.post("/api/v1/vehicles", json=vehicle(inside))
    path = await env.client.get(f"/api/v1/vehicles/{quote(inside)}")
    query = await env.client.get("/api/v1/discrepancies", params={"vin": inside})
    assert [body.status_code, path.status_code, query.status_code] == [422, 422, 422]


async def test_csv_import_and_cli_take_an_untidy_vin(wired: Env, tmp_path: Path) -> None:
    car, other = vin(21), vin(22)
    csv_file = write_csv(tmp_path / "cars.csv", [car, other])
    csv_file.write_text(csv_file.read_text().replace(car, f"  {car.lower()} "))
    imported = await ota(wired, "vehicles", "import", str(csv_file))
    assert imported.exit_code == 0, imported.output
    listed = await wired.client.get("/api/v1/vehicles")
    assert sorted(item["vin"] for item in listed.json()["items"]) == sorted([car, other])
    shown = await ota(wired, "vehicles", "show", untidy(car), "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["vin"] == car
