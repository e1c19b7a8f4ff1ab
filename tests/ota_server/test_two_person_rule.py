"""The two-person rule is about persons: spellings of one name, and tokens one person made for another.

Every approval here used to pass, because the rule compared token names only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from ota_server.db.migrate import upgrade
from ota_server.roles import person_key
from tests.ota_server.conftest import Env, bearer
from tests.ota_server.helpers import recall_body, upload, vehicle, vin


async def _safety_recall(env: Env) -> tuple[str, str]:
    """A filed safety recall on one car: its launch and approve URLs."""
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)))).status_code == 201
    release = (await upload(env.client)).json()
    body = recall_body(release["id"]) | {"safety_recall": True}
    recall = (await env.client.post("/api/v1/recalls", json=body)).json()
    return f"/api/v1/recalls/{recall['id']}/launch", f"/api/v1/recalls/{recall['id']}/approve"


async def _token(env: Env, name: str, role: str, by: dict[str, str] | None = None) -> dict[str, str]:
    """A token for ``name`` created by the holder of ``by`` (the bootstrap admin when None)."""
    resp = await env.client.post("/api/v1/tokens", json={"name": name, "role": role}, headers=by or {})
    assert resp.status_code == 201, resp.text
    return bearer(resp.json()["token"])


def test_person_key_folds_case_unicode_forms_and_spaces() -> None:
    assert person_key("ME-ADMIN") == person_key("me-admin") == person_key("\uff4d\uff45-admin")
    assert person_key("  Ana   María\tLópez ") == person_key("ana maría lópez")
    assert person_key("Stra\u00dfe") == person_key("STRASSE")
    assert person_key("alice") != person_key("alicia")


async def test_another_spelling_of_the_requester_is_the_same_person(env: Env) -> None:
    launch, approve = await _safety_recall(env)
    me = await _token(env, "me-admin", "admin")
    me_again = await _token(env, "ME-ADMIN", "approver", by=me)
    assert (await env.client.post(launch, headers=me)).status_code == 202
    refused = await env.client.post(approve, headers=me_again)
    assert refused.status_code == 403, refused.text
    assert "ME-ADMIN is the same person" in refused.json()["detail"]


async def test_case_alone_makes_no_second_person_even_when_the_admin_made_both(env: Env) -> None:
    launch, approve = await _safety_recall(env)
    alice = await _token(env, "alice", "operator")
    also_alice = await _token(env, "ALICE", "approver")
    assert (await env.client.post(launch, headers=alice)).status_code == 202
    assert (await env.client.post(approve, headers=also_alice)).status_code == 403


async def test_the_bootstrap_admin_cannot_request_a_launch_no_one_could_approve(env: Env) -> None:
    """Outside test (issue 18): the bootstrap admin's request waited for ever (every approver holds a token it
    created), and the recall's later requests all answered that stuck request."""
    launch, approve = await _safety_recall(env)
    refused = await env.client.post(launch)  # the bootstrap admin's own token
    assert refused.status_code == 403, refused.text
    assert "bootstrap admin" in refused.json()["detail"] and "operator" in refused.json()["detail"]
    olga = await _token(env, "olga", "operator")
    bob = await _token(env, "bob", "approver")
    assert (await env.client.post(launch, headers=olga)).status_code == 202
    assert (await env.client.post(approve, headers=bob)).status_code == 201


async def test_an_approver_the_requester_created_is_refused(env: Env) -> None:
    launch, approve = await _safety_recall(env)
    mallory = await _token(env, "mallory", "admin")
    friend = await _token(env, "trudy", "approver", by=mallory)
    assert (await env.client.post(launch, headers=mallory)).status_code == 202
    refused = await env.client.post(approve, headers=friend)
    assert refused.status_code == 403, refused.text
    assert "trudy holds a token created by mallory" in refused.json()["detail"]


async def test_an_approver_down_a_chain_the_requester_started_is_refused(env: Env) -> None:
    launch, approve = await _safety_recall(env)
    mallory = await _token(env, "mallory", "admin")
    middle = await _token(env, "mike", "admin", by=mallory)
    end = await _token(env, "trudy", "approver", by=middle)
    assert (await env.client.post(launch, headers=mallory)).status_code == 202
    assert (await env.client.post(approve, headers=end)).status_code == 403


async def test_an_approver_who_created_the_requester_is_refused(env: Env) -> None:
    launch, approve = await _safety_recall(env)
    mallory = await _token(env, "mallory", "admin")
    puppet = await _token(env, "olga", "operator", by=mallory)
    assert (await env.client.post(launch, headers=puppet)).status_code == 202
    refused = await env.client.post(approve, headers=mallory)
    assert refused.status_code == 403, refused.text
    assert "mallory created olga's token" in refused.json()["detail"]


async def test_people_the_same_admin_created_are_two_persons_and_the_audit_names_both(env: Env) -> None:
    launch, approve = await _safety_recall(env)
    ops_lead = await _token(env, "ops-lead", "admin")  # the bootstrap admin creates a people admin
    olga = await _token(env, "olga", "operator", by=ops_lead)
    sam = await _token(env, "sam", "approver", by=ops_lead)
    assert (await env.client.post(launch, headers=olga)).status_code == 202
    assert (await env.client.post(approve, headers=sam)).status_code == 201
    entries = (await env.client.get("/api/v1/audit", params={"limit": 1000})).json()["items"]
    target: dict[str, Any] = entries[-1]["target"]
    assert (entries[-1]["actor"], entries[-1]["status"]) == ("sam", 201)
    assert target["requested_by"] == "olga" and target["approved_by"] == "sam"
    assert target["requester_token_created_by"] == "ops-lead"
    assert target["approver_token_created_by"] == "ops-lead"
    tokens = {t["name"]: t for t in (await env.client.get("/api/v1/tokens")).json()["items"]}
    assert tokens["olga"]["created_by"] == "ops-lead"
    assert tokens["olga"]["created_by_token"] == tokens["ops-lead"]["id"]
    assert tokens["admin"]["created_by_token"] is None


_TOKEN = (
    "INSERT INTO api_tokens (id, name, role, token_hash, prefix, created_by, created_at) "
    "VALUES (:id, :name, :role, :hash, 'ota_x', :by, '2026-01-01T00:00:00+00:00')"
)


def _migrate_tokens(url: str) -> None:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    upgrade(engine, "0008")
    rows = [
        (1, "admin", "admin", "server (first start)"),
        (2, "Ops-Lead", "admin", "admin"),
        (3, "olga", "operator", "ops-lead"),
        (4, "sam", "approver", "cli:root"),
    ]
    with engine.begin() as conn:
        for token_id, name, role, by in rows:
            conn.execute(text(_TOKEN), {"id": token_id, "name": name, "role": role, "hash": f"h{token_id}", "by": by})
    upgrade(engine)
    with engine.begin() as conn:
        got = conn.execute(text("SELECT id, person, created_by_token_id FROM api_tokens ORDER BY id")).all()
        assert [tuple(r) for r in got] == [(1, "admin", None), (2, "ops-lead", 1), (3, "olga", 2), (4, "sam", None)]
    engine.dispose()


def test_0009_fills_persons_and_creators_on_sqlite(tmp_path: Path) -> None:
    _migrate_tokens(f"sqlite:///{tmp_path / 'ota.db'}")


@pytest.mark.services
def test_0009_fills_persons_and_creators_on_postgres(postgres_url: str) -> None:
    _migrate_tokens(postgres_url)
