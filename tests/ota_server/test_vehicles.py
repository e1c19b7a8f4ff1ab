"""Fleet registration through the API: VIN rules, duplicates, all-or-nothing batches."""

from __future__ import annotations

import json

from tests.ota_server.conftest import Env
from tests.ota_server.helpers import vehicle, vin


async def test_register_and_get(env: Env) -> None:
    v = vin(1)
    resp = await env.client.post("/api/v1/vehicles", json=vehicle(v))
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["vin"] == v
    assert body["ecus"][0]["hardware_id"] == "ecu-main"
    assert body["online"] is False
    got = await env.client.get(f"/api/v1/vehicles/{v}")
    assert got.json() == body


async def test_bad_check_digit_is_422_with_the_vin_message(env: Env) -> None:
    good = vin(2)
    bad = good[:8] + ("0" if good[8] != "0" else "1") + good[9:]
    resp = await env.client.post("/api/v1/vehicles", json=vehicle(bad))
    assert resp.status_code == 422
    assert "check digit" in resp.json()["detail"]


async def test_forbidden_letters_and_length(env: Env) -> None:
    resp = await env.client.post("/api/v1/vehicles", json=vehicle("WVWZZZ1KZAW00000I"))
    assert resp.status_code == 422
    assert "'I'" in resp.json()["detail"]
    resp = await env.client.post("/api/v1/vehicles", json=vehicle("WVWZZZ"))
    assert "17 characters" in resp.json()["detail"]


async def test_european_vin_without_check_digit_is_accepted(env: Env) -> None:
    resp = await env.client.post("/api/v1/vehicles", json=vehicle("WVWZZZ1KZAW000001"))
    assert resp.status_code == 201, resp.text


async def test_duplicate_vin_is_409(env: Env) -> None:
    v = vin(3)
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(v))).status_code == 201
    resp = await env.client.post("/api/v1/vehicles", json=vehicle(v.lower()))
    assert resp.status_code == 409
    assert v in resp.json()["detail"]


async def test_ecu_rules(env: Env) -> None:
    no_ecus = vehicle(vin(4)) | {"ecus": []}
    resp = await env.client.post("/api/v1/vehicles", json=no_ecus)
    assert resp.status_code == 422
    assert "ecus" in resp.json()["detail"]
    twice = vehicle(vin(5))
    twice["ecus"].append(dict(twice["ecus"][0]))
    resp = await env.client.post("/api/v1/vehicles", json=twice)
    assert resp.status_code == 422
    assert "unique" in resp.json()["detail"]


async def test_batch_is_all_or_nothing(env: Env) -> None:
    cars = [vehicle(vin(n)) for n in range(10, 20)]
    cars[7]["vin"] = "1HGCM82633A00435X"  # wrong check digit
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "vehicles[7]" in detail and "1HGCM82633A00435X" in detail
    assert (await env.client.get(f"/api/v1/vehicles/{vin(10)}")).status_code == 404


async def test_batch_with_an_already_registered_vin_stores_nothing(env: Env) -> None:
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(30)))).status_code == 201
    cars = [vehicle(vin(n)) for n in (31, 30, 32)]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 409
    assert (await env.client.get(f"/api/v1/vehicles/{vin(31)}")).status_code == 404


async def test_batch_rejects_repeated_vin(env: Env) -> None:
    cars = [vehicle(vin(40)), vehicle(vin(40))]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 422
    assert "vehicles[1]" in resp.json()["detail"]


async def test_large_batch(env: Env) -> None:
    cars = [vehicle(vin(n)) for n in range(1000, 3000)]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"created": 2000}
    got = await env.client.get(f"/api/v1/vehicles/{vin(2999)}")
    assert got.json()["ecus"][0]["serial"] == cars[-1]["ecus"][0]["serial"]


async def test_unknown_vehicle_is_404(env: Env) -> None:
    for path in ("", "/status", "/agent-config"):
        resp = await env.client.get(f"/api/v1/vehicles/{vin(99)}{path}")
        assert resp.status_code == 404
        assert "no vehicle" in resp.json()["detail"]


async def test_agent_config_carries_both_roots(env: Env) -> None:
    v = vin(50)
    await env.client.post("/api/v1/vehicles", json=vehicle(v))
    cfg = (await env.client.get(f"/api/v1/vehicles/{v}/agent-config")).json()
    assert cfg["repo_url"] == "http://ota.test/repo"
    assert cfg["ecus"] == [{"serial": f"S-{v[-6:]}", "hardware_id": "ecu-main", "installed_version": "1.0.0"}]
    image_root = json.loads(cfg["image_root"])
    director_root = json.loads(cfg["director_root"])
    assert image_root["signed"]["_type"] == "root"
    assert image_root["signed"]["keys"] != director_root["signed"]["keys"]
    served = await env.client.get("/repo/image/metadata/1.root.json")
    assert served.content == cfg["image_root"].encode()
    assert served.headers["content-type"] == "application/json"


async def test_batch_of_one_still_names_the_index(env: Env) -> None:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle("1HGCM82633A00435X")]})
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith("vehicles[0]: invalid VIN '1HGCM82633A00435X'")


async def test_time_zones_are_iana_zones_only(env: Env) -> None:
    """Issue 14: "Europe" (a tzdata folder) was a 500; "localtime" (the server's own zone) was accepted."""
    for n, name in enumerate(["Europe", "localtime", "Factory", "europe/berlin", "../zoneinfo/UTC"], start=10):
        resp = await env.client.post("/api/v1/vehicles", json=vehicle(vin(n)) | {"time_zone": name})
        assert resp.status_code == 422, (name, resp.text)
        assert "time_zone" in resp.json()["detail"] and "IANA" in resp.json()["detail"], resp.text
    for n, name in enumerate(["EST5EDT", "Europe/Berlin", "UTC", "America/Argentina/Buenos_Aires"], start=20):
        resp = await env.client.post("/api/v1/vehicles", json=vehicle(vin(n)) | {"time_zone": name})
        assert resp.status_code == 201, (name, resp.text)
        assert resp.json()["time_zone"] == name


async def test_production_dates_are_plausible(env: Env) -> None:
    for n, day in enumerate(["0001-01-01", "9999-12-31", "1900-06-01"], start=30):
        resp = await env.client.post("/api/v1/vehicles", json=vehicle(vin(n)) | {"production_date": day})
        assert resp.status_code == 422, (day, resp.text)
        assert "production_date" in resp.json()["detail"] and "1979-01-01" in resp.json()["detail"]
