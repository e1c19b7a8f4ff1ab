"""The one list contract on every list endpoint: keyset pages in the asked order, filters, clear 422s."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import column

from ota_server.services.listing import Listing, SortKey, decode_cursor, encode_cursor
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import provision, recall_body, upload, vehicle, vin

MODELS = ["Alpha", "Beta", "Gamma", "Delta", "Sigma"]


async def walk(env: Env, url: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every item, page by page; each page is at most ``limit`` long and the walk takes 2+ pages."""
    items: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        resp = await env.client.get(url, params={**params, "limit": limit, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert len(page["items"]) <= limit
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def _fleet_and_recalls(env: Env) -> list[int]:
    """Five cars (one per model) and five recalls (one per model); the first three launched, the second cancelled."""
    cars = [vehicle(vin(n), model=m) for n, m in enumerate(MODELS, start=1)]
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})).status_code == 201
    await provision(env.client, [c["vin"] for c in cars])
    release = (await upload(env.client)).json()["id"]
    recall_ids = []
    for n, model in enumerate(MODELS):
        body = recall_body(release, f"24V-10{n}", models=[model])
        body["title"] = f"{model} brake assist"
        resp = await env.client.post("/api/v1/recalls", json=body)
        assert resp.status_code == 201, resp.text
        recall_ids.append(resp.json()["id"])
    campaign_ids = []
    for recall_id in recall_ids[:3]:
        resp = await env.client.post(f"/api/v1/recalls/{recall_id}/launch")
        assert resp.status_code == 201, resp.text
        campaign_ids.append(resp.json()["id"])
    cancel = await env.client.post(f"/api/v1/campaigns/{campaign_ids[1]}/cancel", json={"reason": "test"})
    assert cancel.status_code == 200, cancel.text
    return recall_ids


def _ordered(items: list[dict[str, Any]], key: str, tie: str, descending: bool = False) -> bool:
    pairs = [(i[key], i[tie]) for i in items]
    return pairs == sorted(pairs, reverse=descending) and len(set(pairs)) == len(pairs)


async def test_recalls_page_sort_and_filter(env: Env) -> None:
    recall_ids = await _fleet_and_recalls(env)
    everything = await walk(env, "/api/v1/recalls", 2)
    assert [r["id"] for r in everything] == recall_ids
    by_number = await walk(env, "/api/v1/recalls", 2, sort="-campaign_number")
    assert _ordered(by_number, "campaign_number", "id", descending=True) and len(by_number) == 5
    assert [r["title"] for r in await walk(env, "/api/v1/recalls", 1, q="gAMMa")] == ["Gamma brake assist"]
    assert [r["id"] for r in await walk(env, "/api/v1/recalls", 1, q="24v-104")] == [recall_ids[4]]
    assert [r["id"] for r in await walk(env, "/api/v1/recalls", 1, status="not_launched")] == recall_ids[3:]
    assert [r["id"] for r in await walk(env, "/api/v1/recalls", 1, status="active")] == [recall_ids[0], recall_ids[2]]
    assert [r["id"] for r in await walk(env, "/api/v1/recalls", 1, status="cancelled")] == [recall_ids[1]]
    assert await walk(env, "/api/v1/recalls", 1, status="awaiting_approval") == []


async def test_campaigns_page_sort_and_filter(env: Env) -> None:
    recall_ids = await _fleet_and_recalls(env)
    everything = await walk(env, "/api/v1/campaigns", 2)
    assert [c["recall_id"] for c in everything] == recall_ids[:3]
    assert _ordered(await walk(env, "/api/v1/campaigns", 1, sort="-status"), "status", "id", descending=True)
    assert [c["recall_id"] for c in await walk(env, "/api/v1/campaigns", 1, status="cancelled")] == [recall_ids[1]]
    assert [c["recall_id"] for c in await walk(env, "/api/v1/campaigns", 1, recall_id=recall_ids[2])] == [recall_ids[2]]
    assert len(await walk(env, "/api/v1/campaigns", 1, kind="remedy")) == 3
    assert await walk(env, "/api/v1/campaigns", 1, kind="rollback") == []


async def test_releases_page_sort_and_filter(env: Env) -> None:
    for n in range(5):
        resp = await upload(env.client, hardware_id="ecu-a" if n % 2 else "ecu-b", version=f"1.{n}.0", counter=n + 2)
        assert resp.status_code == 201, resp.text
    everything = await walk(env, "/api/v1/releases", 2)
    assert [r["version"] for r in everything] == [f"1.{n}.0" for n in range(5)]
    by_hardware = await walk(env, "/api/v1/releases", 2, sort="hardware_id")
    assert _ordered(by_hardware, "hardware_id", "id") and len(by_hardware) == 5
    by_version = await walk(env, "/api/v1/releases", 2, sort="-version")
    assert [r["version"] for r in by_version] == [f"1.{n}.0" for n in reversed(range(5))]
    assert [r["version"] for r in await walk(env, "/api/v1/releases", 1, hardware_id="ecu-a")] == ["1.1.0", "1.3.0"]


async def test_tokens_page_sort_and_filter(env: Env) -> None:
    for name, role in (("vera", "viewer"), ("otto", "operator"), ("anna", "approver"), ("olga", "operator")):
        await env.headers_for(name, role)
    otto = next(t for t in await walk(env, "/api/v1/tokens", 2) if t["name"] == "otto")
    assert (await env.client.delete(f"/api/v1/tokens/{otto['id']}")).status_code == 200
    everything = await walk(env, "/api/v1/tokens", 2)
    assert [t["name"] for t in everything] == ["admin", "vera", "otto", "anna", "olga"]
    assert [t["name"] for t in await walk(env, "/api/v1/tokens", 2, sort="name")] == sorted(
        ["admin", "vera", "otto", "anna", "olga"]
    )
    assert [t["name"] for t in await walk(env, "/api/v1/tokens", 1, role="operator")] == ["otto", "olga"]
    assert [t["name"] for t in await walk(env, "/api/v1/tokens", 1, revoked="true")] == ["otto"]
    assert len(await walk(env, "/api/v1/tokens", 1, revoked="false")) == 4


async def test_a_page_stays_stable_while_rows_are_added(env: Env) -> None:
    for n in range(3):
        await upload(env.client, version=f"1.{n}.0", counter=n + 2)
    first = (await env.client.get("/api/v1/releases", params={"limit": 2})).json()
    await upload(env.client, version="0.9.0", counter=20)  # a new row, after the first page's rows by id
    rest = (await env.client.get("/api/v1/releases", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [r["version"] for r in first["items"] + rest["items"]] == ["1.0.0", "1.1.0", "1.2.0", "0.9.0"]


@pytest.mark.parametrize(
    "url", ["/api/v1/recalls", "/api/v1/campaigns", "/api/v1/releases", "/api/v1/tokens", "/api/v1/audit"]
)
async def test_bad_sort_or_cursor_is_a_clear_422(env: Env, url: str) -> None:
    bad_sort = await env.client.get(url, params={"sort": "colour"})
    assert bad_sort.status_code == 422 and "'colour' is not a sort key here; use one of" in bad_sort.text
    for cursor in ("garbage", "x" * 501, encode_cursor(_OTHER, "id", [1])):
        resp = await env.client.get(url, params={"cursor": cursor})
        assert resp.status_code == 422, (cursor, resp.text)
    too_many = await env.client.get(url, params={"limit": 1001})
    assert too_many.status_code == 422


_ID = SortKey(column("id"), lambda r: r, int)  # cursors only: the column is never queried
_OTHER = Listing("another-list", {"id": _ID}, _ID, "id")


def test_a_cursor_round_trips_and_a_tampered_one_is_refused() -> None:
    from datetime import UTC, datetime

    from ota_server.errors import InvalidInput

    listing = Listing("things", {"at": SortKey(column("at"), lambda r: r, datetime)}, _ID, "at")
    moment = datetime(2026, 3, 1, 12, tzinfo=UTC)
    cursor = encode_cursor(listing, "-at", [moment, 7])
    assert decode_cursor(listing, "-at", cursor, [datetime, int]) == [moment, 7]
    with pytest.raises(InvalidInput, match="continues the sort '-at'"):
        decode_cursor(listing, "at", cursor, [datetime, int])
    with pytest.raises(InvalidInput, match="not a cursor of this list"):
        decode_cursor(listing, "-at", encode_cursor(listing, "-at", ["yesterday", 7]), [datetime, int])
    with pytest.raises(InvalidInput, match="not a cursor of this list"):
        decode_cursor(listing, "-at", encode_cursor(listing, "-at", [moment, "7"]), [datetime, int])


async def test_campaign_notices_page_and_filter_by_vin_and_kind(env: Env) -> None:
    cars = [vin(n) for n in range(1, 4)]
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in cars]})).is_success
    await provision(env.client, cars)
    release = (await upload(env.client)).json()["id"]
    recall = (await env.client.post("/api/v1/recalls", json=recall_body(release))).json()
    cid = (await env.client.post(f"/api/v1/recalls/{recall['id']}/launch")).json()["id"]
    await env.nonces()  # the notices are out
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/cancel", json={"reason": "test"})).status_code == 200
    await env.runtime.dispatcher.idle()
    url = f"/api/v1/campaigns/{cid}/notices"
    everything = await walk(env, url, 2)
    assert sorted((n["vin"], n["kind"]) for n in everything) == sorted(
        [(v, "campaign") for v in cars] + [(v, "withdrawal") for v in cars]
    )
    assert [n["kind"] for n in await walk(env, url, 1, vin=cars[1].lower())] == ["campaign", "withdrawal"]
    assert {n["vin"] for n in await walk(env, url, 2, kind="withdrawal")} == set(cars)
    newest = await walk(env, url, 4, sort="-published_at")
    assert [n["published_at"] for n in newest] == sorted((n["published_at"] for n in newest), reverse=True)
    assert (await env.client.get(url, params={"sort": "vin"})).status_code == 422
    assert (await env.client.get("/api/v1/campaigns/999/notices")).status_code == 404
