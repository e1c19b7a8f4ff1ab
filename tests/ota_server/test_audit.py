"""The audit log: one chained entry per operator action, exported, verified, tampering caught."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from ota_server.cli import common as cli_common
from ota_server.db.models import AuditEntry, Recall
from ota_server.services import audit
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import recall_body, upload, vehicle, vin
from tests.ota_server.test_cli_ops import LoopTransport, ota


async def _some_actions(env: Env) -> str:
    """A release, a car, a rejected recall, a refused write and a good recall, by two people; the 422's detail."""
    olga = await env.headers_for("olga", "operator")
    vera = await env.headers_for("vera", "viewer")
    release = (await upload(env.client)).json()
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)), headers=olga)).status_code == 201
    bad = await env.client.post("/api/v1/recalls", json=recall_body(release["id"], "nope"), headers=olga)
    assert bad.status_code == 422
    refused = await env.client.post("/api/v1/recalls", json=recall_body(release["id"]), headers=vera)
    assert refused.status_code == 403
    good = await env.client.post("/api/v1/recalls", json=recall_body(release["id"]), headers=olga)
    assert good.status_code == 201
    detail: str = bad.json()["detail"]
    return detail


async def _entries(env: Env) -> list[dict[str, Any]]:
    page = (await env.client.get("/api/v1/audit", params={"limit": 1000})).json()
    entries: list[dict[str, Any]] = page["items"]
    assert page["next_cursor"] is None
    return entries


async def test_every_action_is_one_chained_entry(env: Env) -> None:
    rejected = await _some_actions(env)
    entries = await _entries(env)
    summary = [(e["actor"], e["method"], e["route"], e["status"]) for e in entries]
    assert summary == [
        ("server", "BOOT", "first start: bootstrap admin token", 201),
        ("admin", "POST", "/api/v1/tokens", 201),
        ("admin", "POST", "/api/v1/tokens", 201),
        ("admin", "POST", "/api/v1/releases", 201),
        ("olga", "POST", "/api/v1/vehicles", 201),
        ("olga", "POST", "/api/v1/recalls", 422),
        ("vera", "POST", "/api/v1/recalls", 403),
        ("olga", "POST", "/api/v1/recalls", 201),
    ]
    assert entries[1]["target"]["name"] == "olga" and entries[1]["target"]["role"] == "operator"
    assert entries[5]["detail"] == rejected  # what the client was told, not pydantic's dump with the input
    assert entries[6]["role"] == "viewer" and "needs admin or operator" in entries[6]["detail"]
    recall_id = (await env.client.get("/api/v1/recalls")).json()["items"][0]["id"]
    assert entries[7]["target"] == {"campaign_number": "24V-123", "created": {"recalls": [recall_id]}}
    assert entries[0]["prev_hash"] == audit.GENESIS
    for before, after in itertools.pairwise(entries):
        assert after["prev_hash"] == before["hash"] and after["seq"] == before["seq"] + 1
    assert all(e["at"] == "2026-03-01T12:00:00Z" for e in entries)  # the injected clock

    first = (await env.client.get("/api/v1/audit", params={"limit": 3})).json()
    page = (await env.client.get("/api/v1/audit", params={"limit": 3, "cursor": first["next_cursor"]})).json()
    assert [e["seq"] for e in first["items"] + page["items"]] == [1, 2, 3, 4, 5, 6]
    olga = (await env.client.get("/api/v1/audit", params={"actor": "olga", "route": "/api/v1/rec"})).json()["items"]
    assert [e["status"] for e in olga] == [422, 201]
    window: dict[str, str | int] = {
        "since": "2026-03-01T12:00:00Z",
        "until": "2026-03-01T12:00:01Z",
        "sort": "-seq",
        "limit": 5,
    }
    newest = (await env.client.get("/api/v1/audit", params=window)).json()
    assert [e["seq"] for e in newest["items"]] == [8, 7, 6, 5, 4] and newest["next_cursor"]
    assert (await env.client.get("/api/v1/audit", params={"until": "2026-03-01T12:00:00Z"})).json()["items"] == []

    export = await env.client.get("/api/v1/audit/export")
    assert export.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in export.text.splitlines()] == entries

    verified = (await env.client.get("/api/v1/audit/verify")).json()
    assert verified == {"ok": True, "entries": 8, "head_hash": entries[-1]["hash"], "first_bad": None, "problem": None}


async def test_approval_is_audited_with_both_people(env: Env) -> None:
    release = (await upload(env.client)).json()
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)))).status_code == 201
    body = recall_body(release["id"]) | {"safety_recall": True}
    recall = (await env.client.post("/api/v1/recalls", json=body)).json()
    alice, bob = await env.headers_for("alice", "operator"), await env.headers_for("bob", "approver")
    assert (await env.client.post(f"/api/v1/recalls/{recall['id']}/launch", headers=alice)).status_code == 202
    assert (await env.client.post(f"/api/v1/recalls/{recall['id']}/approve", headers=bob)).status_code == 201
    last_two = (await _entries(env))[-2:]
    assert [(e["actor"], e["route"], e["status"]) for e in last_two] == [
        ("alice", "/api/v1/recalls/{recall_id}/launch", 202),
        ("bob", "/api/v1/recalls/{recall_id}/approve", 201),
    ]
    assert last_two[1]["target"]["recall_id"] == str(recall["id"])
    assert "campaigns" in last_two[1]["target"]["created"]


async def test_no_action_is_stored_without_its_entry(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    release = (await upload(env.client)).json()

    def broken_append(*_args: Any) -> None:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(audit, "append", broken_append)
    with pytest.raises(RuntimeError, match="audit store unavailable"):
        await env.client.post("/api/v1/recalls", json=recall_body(release["id"]))
    monkeypatch.undo()
    with env.runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Recall)) == 0  # rolled back with its entry
    assert (await env.client.post("/api/v1/recalls", json=recall_body(release["id"]))).status_code == 201


async def test_tampering_is_caught_and_the_first_bad_entry_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(make_settings(tmp_path)) as env:
        transport = LoopTransport(httpx.ASGITransport(app=env.app), asyncio.get_running_loop())
        monkeypatch.setattr(cli_common, "transport_override", transport)

        async def _verify_cli() -> Any:  # `ota audit verify`, asking the server
            return await ota(env, "audit", "verify")

        await _some_actions(env)
        assert (await _verify_cli()).exit_code == 0
        with env.runtime.sessions() as session:  # someone with database access hides the refusal
            session.execute(update(AuditEntry).where(AuditEntry.seq == 7).values(status=201, detail=None))
            session.commit()
        verified = (await env.client.get("/api/v1/audit/verify")).json()
        assert (verified["ok"], verified["first_bad"], verified["entries"]) == (False, 7, 6)
        assert "entry 7" in verified["problem"] and "altered" in verified["problem"]
        result = await _verify_cli()
        assert result.exit_code == 1 and "entry 7" in result.output

        with env.runtime.sessions() as session:  # ... or removes it altogether
            session.execute(delete(AuditEntry).where(AuditEntry.seq == 7))
            session.commit()
        verified = (await env.client.get("/api/v1/audit/verify")).json()
        assert verified["first_bad"] == 8 and "entry 7 is missing" in verified["problem"]

        with env.runtime.sessions() as session:  # ... or cuts the end off the log
            session.execute(delete(AuditEntry).where(AuditEntry.seq >= 7))
            session.commit()
        verified = (await env.client.get("/api/v1/audit/verify")).json()
        assert not verified["ok"] and "head records entry 8" in verified["problem"]
