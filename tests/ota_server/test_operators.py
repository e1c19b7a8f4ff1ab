"""Operators: tokens and roles, two-person launch of safety recalls, rate and size limits."""

from __future__ import annotations

import stat
from typing import Any

import httpx
from sqlalchemy import select

from ota_server.db.models import ApiToken, Campaign, Recall
from tests.ota_server.conftest import Env, bearer, make_settings, running
from tests.ota_server.helpers import recall_body, upload, vehicle, vin


async def _recall(env: Env, *, safety: bool = True, number: str = "24V-321") -> dict[str, Any]:
    """One car, one release, one recall filed by the admin; the recall's JSON."""
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)))).status_code == 201
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    body = recall_body(release.json()["id"], number) | {"safety_recall": safety}
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 201, resp.text
    recall: dict[str, Any] = resp.json()
    return recall


async def test_api_routes_need_a_token_and_public_ones_stay_open(env: Env) -> None:
    anonymous = httpx.AsyncClient(transport=env.client._transport, base_url="http://ota.test")
    async with anonymous:
        resp = await anonymous.get("/api/v1/recalls")
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"
        assert "missing API token" in resp.json()["detail"]
        resp = await anonymous.get("/api/v1/recalls", headers=bearer("ota_not-a-real-token"))
        assert resp.status_code == 401
        assert "unknown or revoked" in resp.json()["detail"]
        for open_path in ("/healthz", "/openapi.json", "/docs", "/repo/image/metadata/1.root.json"):
            assert (await anonymous.get(open_path)).status_code == 200, open_path


async def test_each_role_may_do_its_own_part_only(env: Env) -> None:
    viewer = await env.headers_for("vera", "viewer")
    operator = await env.headers_for("olga", "operator")
    approver = await env.headers_for("arno", "approver")
    car = vehicle(vin(7))

    assert (await env.client.get("/api/v1/recalls", headers=viewer)).status_code == 200
    refused = await env.client.post("/api/v1/vehicles", json=car, headers=viewer)
    assert refused.status_code == 403
    assert refused.json()["detail"] == "vera has the viewer role; this needs admin or operator"
    assert (await env.client.get(f"/api/v1/vehicles/{vin(7)}/agent-config", headers=viewer)).status_code == 403
    assert (await env.client.post("/api/v1/vehicles", json=car, headers=approver)).status_code == 403
    assert (await env.client.post("/api/v1/vehicles", json=car, headers=operator)).status_code == 201
    assert (await env.client.get(f"/api/v1/vehicles/{vin(7)}/agent-config", headers=operator)).status_code == 200
    for headers in (viewer, operator, approver):
        assert (await env.client.get("/api/v1/tokens", headers=headers)).status_code == 403
        assert (await env.client.get("/api/v1/audit", headers=headers)).status_code == 403
        resp = await env.client.post("/api/v1/tokens", json={"name": "mallory", "role": "admin"}, headers=headers)
        assert resp.status_code == 403


async def test_tokens_are_shown_once_stored_hashed_and_revocable(env: Env) -> None:
    created = (await env.client.post("/api/v1/tokens", json={"name": "alice", "role": "operator"})).json()
    secret = created["token"]
    assert created["name"] == "alice" and created["role"] == "operator" and secret.startswith(created["prefix"])
    listed = (await env.client.get("/api/v1/tokens")).json()["items"]
    assert [t["name"] for t in listed] == ["admin", "alice"]
    assert all("token" not in t for t in listed)
    with env.runtime.sessions() as session:
        stored = session.scalars(select(ApiToken.token_hash)).all()
    assert secret not in stored and all(len(h) == 64 for h in stored)

    assert (await env.client.get("/api/v1/recalls", headers=bearer(secret))).status_code == 200
    revoked = await env.client.delete(f"/api/v1/tokens/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert (await env.client.get("/api/v1/recalls", headers=bearer(secret))).status_code == 401
    assert (await env.client.delete("/api/v1/tokens/999")).status_code == 404
    last_admin = await env.client.delete(f"/api/v1/tokens/{listed[0]['id']}")
    assert last_admin.status_code == 409 and "last admin token" in last_admin.json()["detail"]
    bad = await env.client.post("/api/v1/tokens", json={"name": "alice smith", "role": "operator"})
    assert bad.status_code == 422 and "person's name" in bad.json()["detail"]
    assert (await env.client.post("/api/v1/tokens", json={"name": "x", "role": "root"})).status_code == 422


async def test_bootstrap_admin_token_is_written_once_for_this_user_only(settings: Any) -> None:
    async with running(settings) as env:
        path = settings.admin_token_file
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        first = path.read_text()
        assert (await env.client.get("/api/v1/tokens")).json()["items"][0]["created_by"] == "server (first start)"
    async with running(settings) as env:  # a restart never mints another admin token
        assert path.read_text() == first
        assert len((await env.client.get("/api/v1/tokens")).json()["items"]) == 1
    assert first.startswith("ota_")


async def test_safety_recall_launches_only_when_a_second_person_approves(env: Env) -> None:
    recall = await _recall(env)
    assert recall["safety_recall"] is True and recall["launch_request"] is None
    alice = await env.headers_for("alice", "operator")
    alice_approver = await env.headers_for("alice", "approver")  # same person, second token
    bob = await env.headers_for("bob", "approver")
    launch, approve = f"/api/v1/recalls/{recall['id']}/launch", f"/api/v1/recalls/{recall['id']}/approve"

    requested = await env.client.post(launch, headers=alice)
    assert requested.status_code == 202, requested.text
    assert requested.json()["state"] == "awaiting_approval" and requested.json()["requested_by"] == "alice"
    assert (await env.client.post(launch, headers=alice)).status_code == 202  # asking again changes nothing
    with env.runtime.sessions() as session:
        assert session.scalars(select(Campaign)).all() == []
    assert env.publisher.messages == []

    assert (await env.client.post(approve, headers=alice)).status_code == 403  # operators do not approve
    same = await env.client.post(approve, headers=alice_approver)
    assert same.status_code == 403
    assert "alice requested the launch" in same.json()["detail"] and "different person" in same.json()["detail"]

    approved = await env.client.post(approve, headers=bob)
    assert approved.status_code == 201, approved.text
    assert approved.json()["population"] == 1
    await env.runtime.dispatcher.idle()
    assert len(env.publisher.messages) == 1
    shown = (await env.client.get(f"/api/v1/recalls/{recall['id']}")).json()
    assert shown["campaign_id"] == approved.json()["id"]
    assert shown["launch_request"]["state"] == "approved"
    assert (shown["launch_request"]["requested_by"], shown["launch_request"]["approved_by"]) == ("alice", "bob")

    assert (await env.client.post(approve, headers=bob)).status_code == 409
    assert (await env.client.post(launch, headers=alice)).status_code == 409


async def test_approving_without_a_request_is_404_and_non_safety_launches_at_once(env: Env) -> None:
    recall = await _recall(env, safety=False)
    bob = await env.headers_for("bob", "approver")
    resp = await env.client.post(f"/api/v1/recalls/{recall['id']}/approve", headers=bob)
    assert resp.status_code == 404 and "must request it first" in resp.json()["detail"]
    operator = await env.headers_for("olga", "operator")
    launched = await env.client.post(f"/api/v1/recalls/{recall['id']}/launch", headers=operator)
    assert launched.status_code == 201 and launched.json()["population"] == 1


async def test_rate_limit_per_token_on_the_injected_clock(tmp_path: Any) -> None:
    async with running(make_settings(tmp_path, rate_limit_per_s=1.0, rate_limit_burst=2)) as env:
        other = await env.headers_for("vera", "viewer")  # spends one of the admin's two
        assert (await env.client.get("/api/v1/recalls")).status_code == 200
        limited = await env.client.get("/api/v1/recalls")
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "1"
        assert "rate limit" in limited.json()["detail"]
        assert (await env.client.get("/api/v1/recalls", headers=other)).status_code == 200  # per token
        env.clock.advance(1.0)
        assert (await env.client.get("/api/v1/recalls")).status_code == 200
        assert (await env.client.get("/healthz")).status_code == 200  # public routes are not limited


async def test_json_bodies_are_capped(tmp_path: Any) -> None:
    async with running(make_settings(tmp_path, max_body_bytes=2000)) as env:
        big = {"vehicles": [vehicle(vin(n)) for n in range(1, 30)]}
        resp = await env.client.post("/api/v1/vehicles/batch", json=big)
        assert resp.status_code == 413
        assert resp.json()["detail"] == "request body exceeds the limit of 2000 bytes"

        async def chunks() -> Any:  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 500

        resp = await env.client.post(
            "/api/v1/vehicles/batch", content=chunks(), headers={"content-type": "application/json"}
        )
        assert resp.status_code == 413
        with env.runtime.sessions() as session:
            assert session.scalars(select(Recall)).all() == []
        assert (await env.client.get(f"/api/v1/vehicles/{vin(1)}")).status_code == 404
        # the bundle upload keeps its own, larger cap
        assert (await upload(env.client)).status_code == 201
