"""The owner-notification log: what each owner was told, when, through which channel."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ota_server.db.migrate import upgrade
from ota_server.errors import InvalidInput
from ota_server.services import owner_notifications
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, vin
from tests.ota_server.test_migration_0006 import _ROWS

VINS = [vin(n) for n in range(1, 4)]
AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def test_record_keeps_text_and_hash_and_refuses_unknown_kinds(env: Env) -> None:
    campaign = await launched(env.client, VINS)
    with env.runtime.sessions() as session:
        owner_notifications.record(
            session,
            vin=VINS[0].lower(),
            campaign_id=campaign["id"],
            kind="consent_request",
            channel="owner_page",
            text="Please accept 1.1.0",
            at=AT,
            detail="images abc",
        )
        owner_notifications.record(
            session,
            vin=VINS[1],
            campaign_id=None,
            recall_id=campaign["recall_id"],
            kind="letter",
            channel="letter",
            text="Dear owner",
            at=AT,
            keep_text=False,
        )
        with pytest.raises(InvalidInput, match="kind 'sms'"):
            owner_notifications.record(
                session, vin=VINS[0], campaign_id=campaign["id"], kind="sms", channel="mqtt", text="x", at=AT
            )
        with pytest.raises(InvalidInput, match="channel 'pigeon'"):
            owner_notifications.record(
                session, vin=VINS[0], campaign_id=campaign["id"], kind="notice", channel="pigeon", text="x", at=AT
            )
        session.commit()
        rows, _ = owner_notifications.page(session, campaign["recall_id"], vin=VINS[0])
        asked = [r for r in rows if r.kind == "consent_request"]
        assert len(asked) == 1 and asked[0].vin == VINS[0] and asked[0].text == "Please accept 1.1.0"
        assert asked[0].text_sha256 == hashlib.sha256(b"Please accept 1.1.0").hexdigest()
        letter = [r for r in owner_notifications.of_vin(session, VINS[1]) if r.kind == "letter"]
        assert letter[0].text == "" and letter[0].text_sha256 == hashlib.sha256(b"Dear owner").hexdigest()
        assert letter[0].recall_id == campaign["recall_id"] and letter[0].campaign_id is None


def test_migration_copies_every_mqtt_notice_into_the_log(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    upgrade(engine, "0015")
    payload = '{"kind": "campaign", "vin": "1HGCM82633A004352", "title": "Brake assist"}'
    with engine.begin() as conn:
        for statement in _ROWS:
            conn.execute(text(statement))
        conn.execute(
            text(
                "INSERT INTO notice_log (campaign_id, vin, kind, nonce, payload, published_at) VALUES "
                "(1, '1HGCM82633A004352', 'campaign', 'n1', :payload, '2026-01-02T00:00:00+00:00')"
            ),
            {"payload": payload},
        )
    upgrade(engine)
    with engine.begin() as conn:
        row = conn.execute(
            text("SELECT recall_id, campaign_id, vin, kind, channel, text, text_sha256 FROM owner_notifications")
        ).one()
    engine.dispose()
    assert tuple(row[:6]) == (1, 1, "1HGCM82633A004352", "notice", "mqtt", payload)
    assert row[6] == hashlib.sha256(payload.encode()).hexdigest()


async def test_every_published_notice_is_logged_with_the_text_the_owner_sees(env: Env) -> None:
    campaign = await launched(env.client, VINS)
    await env.nonces()  # the dispatcher published every notice
    with env.runtime.sessions() as session:
        rows, _ = owner_notifications.page(session, campaign["recall_id"])
    assert sorted(r.vin for r in rows) == VINS
    assert {(r.kind, r.channel) for r in rows} == {("notice", "mqtt")}
    assert "Contact: Dana Smith, Recall coordinator, +1 555 0100, recalls@example.com" in rows[0].text
    assert rows[0].text_sha256 == hashlib.sha256(rows[0].text.encode()).hexdigest()


async def test_owner_letters_are_recorded_listed_and_exported(env: Env) -> None:
    campaign = await launched(env.client, VINS)
    rid = campaign["recall_id"]
    letters = f"/api/v1/recalls/{rid}/owner-letters"
    first = {"vins": "all", "sent_on": "2026-03-05", "letter": "first", "text": "Dear owner, your car needs..."}
    assert (await env.client.post(letters, json=first)).json() == {"recorded": len(VINS)}
    follow_up = {"vins": [VINS[1].lower()], "sent_on": "2026-04-05", "letter": "follow_up", "text": "=HYPERLINK()"}
    assert (await env.client.post(letters, json=follow_up)).json() == {"recorded": 1}
    stranger = await env.client.post(letters, json={**follow_up, "vins": [vin(40)]})
    assert stranger.status_code == 422 and vin(40) in stranger.json()["detail"]

    log = f"/api/v1/recalls/{rid}/owner-notifications"
    page = (await env.client.get(log, params={"limit": 2})).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = (await env.client.get(log, params={"cursor": page["next_cursor"], "limit": 100})).json()
    rows = page["items"] + rest["items"]
    assert rest["next_cursor"] is None and len({r["id"] for r in rows}) == len(rows)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    letters_only = (await env.client.get(log, params={"kind": "letter", "sort": "-at"})).json()["items"]
    assert len(letters_only) == len(VINS) + 1 and letters_only[0]["detail"] == "follow_up"
    mailed = [r for r in rows if r["kind"] == "letter"]
    assert len(mailed) == len(VINS) + 1 and {r["channel"] for r in mailed} == {"letter"}
    assert {r["detail"] for r in mailed} == {"first", "follow_up"} and mailed[0]["at"].startswith("2026-03-05")
    assert {r["recorded_by"] for r in mailed} == {"admin"}
    assert {r["kind"] for r in rows} == {"notice", "letter"}
    exported = await env.client.get(log, params={"format": "csv", "vin": VINS[1], "limit": 1})  # every row
    assert exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.text)))
    assert {r["vin"] for r in lines} == {VINS[1]} and len(lines) == 3  # notice, first letter, follow-up
    assert [r["text"] for r in lines if r["detail"] == "follow_up"] == ["'=HYPERLINK()"]  # no formula runs
    trail = (await env.client.get("/api/v1/audit", params={"limit": 1000})).json()["items"]
    audited = [(e["method"], e["route"], e["status"], e["target"].get("letter")) for e in trail]
    assert ("POST", "/api/v1/recalls/{recall_id}/owner-letters", 201, "follow_up") in audited
    assert ("POST", "/api/v1/recalls/{recall_id}/owner-letters", 422, "follow_up") in audited


async def test_a_letter_is_on_the_cars_timeline(env: Env) -> None:
    campaign = await launched(env.client, VINS)
    letter = {"vins": [VINS[0]], "sent_on": "2026-03-05", "letter": "first", "text": "Dear owner, ..."}
    resp = await env.client.post(f"/api/v1/recalls/{campaign['recall_id']}/owner-letters", json=letter)
    assert resp.status_code == 201, resp.text
    timeline = (await env.client.get(f"/api/v1/vehicles/{VINS[0]}/timeline")).json()
    told = [e for e in timeline["entries"] if e["kind"] == "owner_notification"]
    assert len(told) == 1 and told[0]["recall_number"] == "24V-123"
    assert told[0]["summary"] == "Owner letter by letter (first): Dear owner, ..."
    assert told[0]["source"] == "admin"
    other = (await env.client.get(f"/api/v1/vehicles/{VINS[1]}/timeline")).json()
    assert not [e for e in other["entries"] if e["kind"] == "owner_notification"]
