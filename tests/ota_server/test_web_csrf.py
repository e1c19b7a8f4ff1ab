"""Writes from the dashboard with the login cookie: only with the session's CSRF token, from this origin.

Each attack is refused with a precise 403 and audited under the person whose cookie it rode on;
the page's own write (cookie + CSRF token + same origin) works and is audited under that person;
a bearer header needs none of it. In-process (SQLite, simulated time).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, vin

ORIGIN = "http://ota.test"
FLEET = [vin(n) for n in range(1, 4)]


async def _token(env: Env, name: str, role: str) -> str:
    resp = await env.client.post("/api/v1/tokens", json={"name": name, "role": role})
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token


async def _browser(env: Env, token: str) -> httpx.AsyncClient:
    """A signed-in browser: the login form's cookie, nothing else."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url=ORIGIN)
    resp = await client.post("/ui/login", data={"token": token}, headers={"Origin": ORIGIN})
    assert resp.status_code == 303 and "error" not in resp.headers["location"], resp.headers
    return client


async def _session(client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await client.get("/ui/session")
    assert resp.status_code == 200, resp.text
    assert resp.headers["cache-control"] == "no-store"
    body: dict[str, Any] = resp.json()
    return body


@pytest.fixture
async def desk(env: Env) -> AsyncIterator[tuple[int, httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]]:
    """A live campaign and three signed-in browsers: an operator, another operator, a viewer."""
    campaign_id = int((await launched(env.client, FLEET))["id"])
    browsers = [
        await _browser(env, await _token(env, name, role))
        for name, role in (("olga", "operator"), ("otto", "operator"), ("vera", "viewer"))
    ]
    try:
        olga, otto, vera = browsers
        yield campaign_id, olga, otto, vera
    finally:
        for client in browsers:
            await client.aclose()


async def _audit(env: Env, actor: str) -> list[dict[str, Any]]:
    resp = await env.client.get("/api/v1/audit", params={"actor": actor})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    entries: list[dict[str, Any]] = body.get("items", body.get("entries", []))  # the list contract (or the old page)
    return sorted((e for e in entries if e["actor"] == actor), key=lambda e: int(e["seq"]))


async def _status(env: Env, campaign_id: int) -> str:
    status: str = (await env.client.get(f"/api/v1/campaigns/{campaign_id}")).json()["status"]
    return status


async def test_the_session_json_names_the_person_and_what_they_may_do(
    env: Env, desk: tuple[int, httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    _, olga, otto, vera = desk
    mine, theirs, viewer = await _session(olga), await _session(otto), await _session(vera)
    assert (mine["name"], mine["role"], mine["may_operate"], mine["may_approve"]) == ("olga", "operator", True, False)
    assert (viewer["role"], viewer["may_operate"]) == ("viewer", False)
    assert len({mine["csrf_token"], theirs["csrf_token"], viewer["csrf_token"]}) == 3  # one per session
    assert mine["csrf_token"] == (await _session(olga))["csrf_token"]  # stable for the session
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url=ORIGIN) as nobody:
        assert (await nobody.get("/ui/session")).status_code == 401


async def test_the_pages_write_with_cookie_csrf_and_origin_and_the_audit_names_the_person(
    env: Env, desk: tuple[int, httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    campaign_id, olga, _, _ = desk
    csrf = (await _session(olga))["csrf_token"]
    headers = {"X-CSRF-Token": csrf, "Origin": ORIGIN, "Sec-Fetch-Site": "same-origin"}
    paused = await olga.post(f"/api/v1/campaigns/{campaign_id}/pause", json={"reason": "brake check"}, headers=headers)
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused" and "olga" in paused.json()["status_reason"]
    resumed = await olga.post(f"/api/v1/campaigns/{campaign_id}/resume", json={"reason": "checked"}, headers=headers)
    assert resumed.status_code == 200 and resumed.json()["status"] == "active", resumed.text
    entries = [(e["route"], e["status"]) for e in await _audit(env, "olga")]
    assert entries[-2:] == [
        ("/api/v1/campaigns/{campaign_id}/pause", 200),
        ("/api/v1/campaigns/{campaign_id}/resume", 200),
    ]


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("no_csrf", "needs the X-CSRF-Token header"),
        ("wrong_csrf", "does not belong to this sign-in session"),
        ("other_sessions_csrf", "does not belong to this sign-in session"),
        ("cross_site_origin", "from another site (Origin: https://evil.example)"),
        ("cross_site_fetch", "from another site (Sec-Fetch-Site: cross-site)"),
        ("no_origin_at_all", "must come from the dashboard's pages"),
    ],
)
async def test_a_cookie_write_without_the_sessions_csrf_from_this_origin_is_refused_and_audited(
    env: Env,
    desk: tuple[int, httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient],
    attack: str,
    message: str,
) -> None:
    campaign_id, olga, otto, _ = desk
    mine, theirs = (await _session(olga))["csrf_token"], (await _session(otto))["csrf_token"]
    headers = {
        "no_csrf": {"Origin": ORIGIN},
        "wrong_csrf": {"Origin": ORIGIN, "X-CSRF-Token": "0" * 64},
        "other_sessions_csrf": {"Origin": ORIGIN, "X-CSRF-Token": theirs},
        "cross_site_origin": {"Origin": "https://evil.example", "X-CSRF-Token": mine},
        "cross_site_fetch": {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site", "X-CSRF-Token": mine},
        "no_origin_at_all": {"X-CSRF-Token": mine},
    }[attack]
    resp = await olga.post(f"/api/v1/campaigns/{campaign_id}/pause", json={"reason": "forged"}, headers=headers)
    assert resp.status_code == 403, resp.text
    assert message in resp.json()["detail"]
    assert await _status(env, campaign_id) == "active"  # nothing happened
    refused = (await _audit(env, "olga"))[-1]
    assert (refused["route"], refused["status"], refused["role"]) == (
        "/api/v1/campaigns/{campaign_id}/pause",
        403,
        "operator",
    )
    assert message in refused["detail"] and refused["target"] == {"campaign_id": str(campaign_id)}


async def test_a_viewers_cookie_with_its_valid_csrf_is_refused_by_role(
    env: Env, desk: tuple[int, httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    campaign_id, _, _, vera = desk
    headers = {"X-CSRF-Token": (await _session(vera))["csrf_token"], "Origin": ORIGIN}
    resp = await vera.post(f"/api/v1/campaigns/{campaign_id}/pause", json={"reason": "curious"}, headers=headers)
    assert resp.status_code == 403
    assert resp.json()["detail"] == "vera has the viewer role; this needs admin or operator"
    assert await _status(env, campaign_id) == "active"
    assert [(e["status"], e["role"]) for e in await _audit(env, "vera")] == [(403, "viewer")]


async def test_a_bearer_header_needs_no_csrf_and_beats_a_cookie(
    env: Env, desk: tuple[int, httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    campaign_id, _, _, vera = desk
    operator = await _token(env, "cli-user", "operator")
    # vera's browser holds a viewer cookie; the explicit bearer header is who acts (no CSRF needed).
    resp = await vera.post(
        f"/api/v1/campaigns/{campaign_id}/pause",
        json={"reason": "from the CLI"},
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert resp.status_code == 200, resp.text
    assert (await _audit(env, "cli-user"))[-1]["status"] == 200
