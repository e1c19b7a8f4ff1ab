"""POST /api/v1/releases/{id}/retire and `ota releases retire|list`: refused while used, then retired for good."""

from __future__ import annotations

import json

from tests.ota_server.conftest import Env
from tests.ota_server.helpers import provision, recall_body, upload, vehicle, vin
from tests.ota_server.test_cli_ops import ota, wired  # noqa: F401  (the fixture)

CARS = [vin(n) for n in range(1, 3)]


async def _recall(env: Env, release_id: int, number: str = "24V-123") -> int:
    resp = await env.client.post("/api/v1/recalls", json=recall_body(release_id, number))
    assert resp.status_code == 201, resp.text
    recall_id: int = resp.json()["id"]
    return recall_id


async def _retire(env: Env, release_id: int, reason: str = "superseded by 1.2.0") -> tuple[int, dict[str, str]]:
    resp = await env.client.post(f"/api/v1/releases/{release_id}/retire", json={"reason": reason})
    body: dict[str, str] = resp.json()
    return resp.status_code, body


async def test_retire_is_refused_while_a_recall_or_an_unfinished_campaign_uses_it(env: Env) -> None:
    await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in CARS]})
    await provision(env.client, CARS)
    release_id = (await upload(env.client)).json()["id"]
    recall_id = await _recall(env, release_id)
    assert await _retire(env, release_id) == (409, {"detail": f"release {release_id} (ecu-main 1.1.0) is still used "
                                                    "by recall 24V-123 (not launched)"})  # fmt: skip
    campaign = (await env.client.post(f"/api/v1/recalls/{recall_id}/launch")).json()
    status, body = await _retire(env, release_id)
    assert status == 409 and f"campaign {campaign['id']} (active)" in body["detail"]
    cancelled = await env.client.post(f"/api/v1/campaigns/{campaign['id']}/cancel", json={"reason": "wrong fix"})
    assert cancelled.status_code == 200, cancelled.text

    status, retired = await _retire(env, release_id)
    assert status == 200, retired
    assert retired["retired_by"] == "admin" and retired["retire_reason"] == "superseded by 1.2.0"
    assert retired["retired_at"] is not None
    status, again = await _retire(env, release_id)
    assert status == 409 and "was retired on" in again["detail"]

    refused = await env.client.post("/api/v1/recalls", json=recall_body(release_id, "24V-124"))
    assert refused.status_code == 409 and f"release {release_id} (ecu-main 1.1.0) is retired" in refused.text
    listed = (await env.client.get("/api/v1/releases", params={"retired": "true"})).json()["items"]
    assert [r["id"] for r in listed] == [release_id]
    assert (await env.client.get("/api/v1/releases", params={"retired": "false"})).json()["items"] == []
    trail = (await env.client.get("/api/v1/audit/export")).text.splitlines()
    entries = [json.loads(line) for line in trail if "/retire" in line]
    assert [(e["status"], e["target"].get("reason")) for e in entries] == [(409, "superseded by 1.2.0")] * 2 + [
        (200, "superseded by 1.2.0"),
        (409, "superseded by 1.2.0"),
    ]


async def test_a_scheduled_campaign_is_named_scheduled_not_active(env: Env) -> None:
    """Outside test (issue 18): the refusal said "still used by campaign 3 (active)" before its start."""
    await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in CARS]})
    await provision(env.client, CARS)
    release_id = (await upload(env.client)).json()["id"]
    body = recall_body(release_id) | {"rollout": {"start_at": "2026-03-02T00:00:00Z"}}  # the clock: 03-01 12:00
    recall = await env.client.post("/api/v1/recalls", json=body)
    assert recall.status_code == 201, recall.text
    campaign = (await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")).json()
    status, refused = await _retire(env, release_id)
    assert status == 409
    assert f"campaign {campaign['id']} (scheduled: starts at 2026-03-02 00:00 UTC)" in refused["detail"], refused
    assert "active" not in refused["detail"]


async def test_retire_needs_an_operator_a_reason_and_a_release(env: Env) -> None:
    release_id = (await upload(env.client)).json()["id"]
    assert (await env.client.post(f"/api/v1/releases/{release_id}/retire", json={})).status_code == 422
    assert (await env.client.post(f"/api/v1/releases/{release_id}/retire", json={"reason": ""})).status_code == 422
    assert (await _retire(env, 999))[0] == 404
    viewer = await env.headers_for("vera", "viewer")
    resp = await env.client.post(f"/api/v1/releases/{release_id}/retire", json={"reason": "x"}, headers=viewer)
    assert resp.status_code == 403


async def test_a_retired_release_cannot_be_a_rollback_release(env: Env) -> None:
    old = (await upload(env.client)).json()["id"]
    back = (await upload(env.client, version="1.0.1", counter=3)).json()["id"]
    assert (await _retire(env, back))[0] == 200
    body = recall_body(old)
    body["rollout"] = {"rollback_release_id": back}
    refused = await env.client.post("/api/v1/recalls", json=body)
    assert refused.status_code == 409 and "rollout.rollback_release_id" in refused.text


async def test_cli_retire_and_list(wired: Env) -> None:  # noqa: F811
    release_id = (await upload(wired.client)).json()["id"]
    await upload(wired.client, version="1.2.0", counter=3)
    result = await ota(wired, "releases", "retire", str(release_id), "--reason", "superseded")
    assert result.exit_code == 0, result.output
    assert f"release {release_id} retired by admin" in result.output
    listed = await ota(wired, "releases", "list", "--retired", "--json")
    assert [r["id"] for r in json.loads(listed.output)] == [release_id]
    in_use = await ota(wired, "releases", "list", "--in-use", "--json")
    assert [r["version"] for r in json.loads(in_use.output)] == ["1.2.0"]
    again = await ota(wired, "releases", "retire", str(release_id), "--reason", "again")
    assert again.exit_code != 0 and "was retired on" in again.output
