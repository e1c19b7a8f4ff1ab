"""Multi-ECU recalls: several releases, one per hardware id, installed on a car together."""

from __future__ import annotations

from typing import Any

from tests.ota_server.conftest import Env
from tests.ota_server.helpers import recall_body, upload, vehicle, vin

GATEWAY = "gateway-v2"


def _two_ecu_car(n: int, *, gateway: bool = True) -> dict[str, Any]:
    extra = [{"serial": f"G-{n:06d}", "hardware_id": GATEWAY, "installed_version": "3.0.0"}] if gateway else []
    return vehicle(vin(n), extra_ecus=extra)


async def _release(env: Env, hardware_id: str = "ecu-main", version: str = "1.1.0") -> int:
    resp = await upload(env.client, hardware_id=hardware_id, version=version)
    assert resp.status_code == 201, resp.text
    release_id: int = resp.json()["id"]
    return release_id


async def test_a_recall_names_one_release_per_hardware_id(env: Env) -> None:
    cars = [_two_ecu_car(1), _two_ecu_car(2, gateway=False), vehicle(vin(3), hardware_id="other")]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 201, resp.text
    main, gateway = await _release(env), await _release(env, GATEWAY, "3.1.0")
    body = {**recall_body(main), "release_id": None, "release_ids": [main, gateway]}
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 201, resp.text
    recall = resp.json()
    assert recall["release_id"] == main and recall["release_ids"] == [main, gateway]
    assert recall["affected_count"] == 2  # a car with either hardware; the third has neither
    listed = await env.client.get(f"/api/v1/recalls/{recall['id']}")
    assert listed.json()["release_ids"] == [main, gateway]
    one = await env.client.post("/api/v1/recalls", json=recall_body(main, "24V-124"))
    assert one.status_code == 201 and one.json()["release_ids"] == [main]


async def test_a_second_release_of_one_hardware_id_is_refused(env: Env) -> None:
    first, second = await _release(env), await _release(env, version="1.2.0")
    body = {**recall_body(first), "release_ids": [first, second]}
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 422, resp.text
    assert "ecu-main" in resp.text and "at most one release per hardware id" in resp.text
    assert (await env.client.get("/api/v1/recalls")).json() == []
    repeated = await env.client.post("/api/v1/recalls", json={**recall_body(first), "release_ids": [first, first]})
    assert repeated.status_code == 422 and "more than once" in repeated.text
    outside = await env.client.post("/api/v1/recalls", json={**recall_body(first), "release_ids": [second]})
    assert outside.status_code == 422 and "not one of release_ids" in outside.text
    neither = await env.client.post("/api/v1/recalls", json={**recall_body(first), "release_id": None})
    assert neither.status_code == 422 and "release_id or release_ids" in neither.text
