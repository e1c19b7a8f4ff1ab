"""Nothing is stored from a rejected request: every POST route, fed bad bodies, leaves every table as it was.

The audit log is the one exception, on purpose: it records the refusal.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, func, select

from ota_server.db.models import AuditEntry
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import bundle_bytes, launched, recall_body, upload, vehicle, vin
from tests.ota_server.test_fuzz_api import snapshot

Request = tuple[str, str, dict[str, Any]]


def _json(path: str, body: Any) -> Request:
    return ("POST", path, {"json": body})


def _upload(data: bytes, **form: str) -> Request:
    fields = {"hardware_id": "ecu-main", "version": "9.9.9", "release_counter": "9"} | form
    return ("POST", "/api/v1/releases", {"files": {"file": ("x.otab", data)}, "data": fields})


async def test_rejected_posts_store_nothing(env: Env) -> None:
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)))).status_code == 201
    release = (await upload(env.client)).json()
    body = recall_body(release["id"], "24V-777") | {"safety_recall": True}
    recall = (await env.client.post("/api/v1/recalls", json=body)).json()
    alice = await env.headers_for("alice", "operator")
    alice_approves = await env.headers_for("alice", "approver")
    assert (await env.client.post(f"/api/v1/recalls/{recall['id']}/launch", headers=alice)).status_code == 202
    launch, approve = f"/api/v1/recalls/{recall['id']}/launch", f"/api/v1/recalls/{recall['id']}/approve"
    car = vehicle(vin(2))

    attempts: list[tuple[Request, dict[str, str] | None]] = [
        (_json("/api/v1/vehicles", {}), None),
        (_json("/api/v1/vehicles", car | {"vin": "1HGCM82633A00435X"}), None),  # bad check digit
        (_json("/api/v1/vehicles", vehicle(vin(1))), None),  # already registered
        (_json("/api/v1/vehicles", car | {"ecus": []}), None),
        (_json("/api/v1/vehicles", car | {"colour": "red"}), None),
        (("POST", "/api/v1/vehicles", {"content": b"\xff{not json"}), {"content-type": "application/json"}),
        (_json("/api/v1/vehicles/batch", {"vehicles": [car, vehicle(vin(1))]}), None),  # one bad: all refused
        (_json("/api/v1/vehicles/batch", {"vehicles": [car, car]}), None),
        (_json("/api/v1/vehicles/batch", {"vehicles": "everyone"}), None),
        (_upload(b"not a bundle"), None),
        (_upload(bundle_bytes(version="2.0.0", counter=3), version="2.0.1"), None),  # form disagrees
        (_upload(bundle_bytes(), version="1.1.0", release_counter="2"), None),  # duplicate release
        (_upload(b"", release_counter="-1"), None),
        (_json("/api/v1/recalls", recall_body(release["id"], "24V-777")), None),  # duplicate number
        (_json("/api/v1/recalls", recall_body(999, "24V-778")), None),
        (_json("/api/v1/recalls", recall_body(release["id"], "24V-779") | {"release_id": 2**40}), None),
        (_json("/api/v1/recalls", recall_body(release["id"], "24V-780", model_years={"min": 10**12})), None),
        (_json("/api/v1/recalls", [1, 2, 3]), None),
        (("POST", "/api/v1/recalls/999/launch", {}), None),
        (("POST", "/api/v1/recalls/99999999999/launch", {}), None),
        (("POST", approve, {}), alice),  # an operator may not approve
        (("POST", approve, {}), alice_approves),  # the requester may not approve
        (("POST", "/api/v1/recalls/999/approve", {}), None),
        (_json("/api/v1/tokens", {"name": "", "role": "operator"}), None),
        (_json("/api/v1/tokens", {"name": "eve", "role": "superuser"}), None),
        (_json("/api/v1/tokens", {"name": "eve", "role": "admin"}), alice),  # operators make no tokens
        (("DELETE", "/api/v1/tokens/1", {}), None),  # the last admin token
    ]
    metadata = MetaData()
    metadata.reflect(env.runtime.engine)
    before = snapshot(env.runtime.engine, metadata)
    bundles = sorted(env.runtime.settings.bundles_dir.iterdir())
    with env.runtime.sessions() as session:
        audited_before = session.scalar(select(func.count()).select_from(AuditEntry))

    for (method, path, kwargs), headers in attempts:
        resp = await env.client.request(method, path, headers=headers, **kwargs)
        assert 400 <= resp.status_code < 500, (method, path, resp.status_code, resp.text)
        assert resp.json()["detail"], resp.text
        assert snapshot(env.runtime.engine, metadata) == before, (method, path, resp.text)
        assert sorted(env.runtime.settings.bundles_dir.iterdir()) == bundles, (method, path)

    with env.runtime.sessions() as session:  # the refusals that reached a route are on the record
        audited = session.scalar(select(func.count()).select_from(AuditEntry))
    assert audited is not None and audited_before is not None and audited > audited_before
    assert (await env.client.post(launch, headers=alice)).status_code == 202  # still waiting, untouched


NUL = "\u0000"


async def test_control_characters_are_refused_alike_on_both_backends(either_env: Env) -> None:
    """Issue 14: U+0000 was stored by SQLite and a 500 on PostgreSQL; now every way in answers the same 4xx."""
    env = either_env
    car = vin(1)
    campaign = await launched(env.client, [car])
    await env.runtime.dispatcher.idle()  # the launch's notice recorded as published before the snapshot
    cid, release_id = campaign["id"], campaign["release_id"]
    recall = recall_body(release_id, "24V-555")
    notice = {"purpose": "Fix", "safety_recall": False, "contact": {"name": "Care"}}
    fresh = vehicle(vin(2))
    ecu = fresh["ecus"][0]
    lone_surrogate = b'{"campaign_number": "24V-556", "title": "\\ud800", "defect": "d", "safety_risk": "r", '
    lone_surrogate += b'"remedy": "m", "release_id": %d}' % release_id
    attempts: list[tuple[Request, int, str]] = [
        (_json("/api/v1/vehicles", fresh | {"make": f"Ac{NUL}me"}), 422, "make"),
        (_json("/api/v1/vehicles", fresh | {"model": f"S{NUL}edan"}), 422, "model"),
        (_json("/api/v1/vehicles", fresh | {"ecus": [ecu | {"serial": f"S{NUL}1"}]}), 422, "ecus[0].serial"),
        (_json("/api/v1/vehicles", fresh | {"ecus": [ecu | {"hardware_id": f"e{NUL}"}]}), 422, "hardware_id"),
        (_json("/api/v1/vehicles", fresh | {"ecus": [ecu | {"installed_version": f"1{NUL}"}]}), 422, "version"),
        (_json("/api/v1/vehicles", fresh | {"time_zone": f"UTC{NUL}"}), 422, "time_zone"),
        (_json("/api/v1/vehicles/batch", {"vehicles": [fresh | {"model": f"\x07{NUL}"}]}), 422, "vehicles[0]"),
        (_json("/api/v1/recalls", recall | {"title": f"T{NUL}"}), 422, "title"),
        (_json("/api/v1/recalls", recall | {"manufacturer_number": f"M{NUL}"}), 422, "manufacturer_number"),
        (_json("/api/v1/recalls", recall | {"defect": f"D{NUL}"}), 422, "defect"),
        (_json("/api/v1/recalls", recall_body(release_id, "24V-555", models=[f"S{NUL}edan"])), 422, "models[0]"),
        (_json("/api/v1/recalls", recall_body(release_id, "24V-555", hardware_id=f"e{NUL}")), 422, "hardware_id"),
        (
            _json("/api/v1/recalls", recall_body(release_id, "24V-555", installed_versions={"min": f"1{NUL}"})),
            422,
            "installed_versions.min",
        ),
        (
            _json("/api/v1/recalls", recall_body(release_id, "24V-555", vin_range={"first": NUL, "last": car})),
            422,
            "vin_range.first",
        ),
        (_json("/api/v1/recalls", recall | {"owner_notice": notice | {"purpose": f"F{NUL}"}}), 422, "purpose"),
        (
            _json("/api/v1/recalls", recall | {"owner_notice": notice | {"contact": {"name": NUL}}}),
            422,
            "owner_notice.contact.name",
        ),
        (("POST", "/api/v1/recalls", {"content": lone_surrogate}), 422, "title"),
        (_json(f"/api/v1/campaigns/{cid}/pause", {"reason": f"calls{NUL}"}), 422, "reason"),
        (
            _json(
                f"/api/v1/campaigns/{cid}/vehicles/{car}/outcome", {"outcome": "inspected_not_needed", "evidence": NUL}
            ),
            422,
            "evidence",
        ),
        (
            _json(
                f"/api/v1/campaigns/{cid}/vehicles/{car}/outcome",
                {"outcome": "inspected_not_needed", "evidence": "RO-1", "reference": f"R{NUL}"},
            ),
            422,
            "reference",
        ),
        (_json("/api/v1/tokens", {"name": f"e{NUL}ve", "role": "viewer"}), 422, "name"),
        (_upload(b"x", hardware_id=f"ecu{NUL}"), 422, "hardware_id"),
        (_upload(b"x", version=f"9{NUL}"), 422, "version"),
        (("GET", "/api/v1/vehicles/1HGCM8269NA00010%00", {}), 422, "vin"),
        (("GET", f"/api/v1/campaigns/{cid}/notices?vin=%00", {}), 422, "vin"),
        (("GET", f"/api/v1/public/recalls?vin={car[:16]}%00", {}), 422, "vin"),
        (("GET", f"/api/v1/reports/recalls/{campaign['recall_id']}/completion?quarter=2026Q%00", {}), 422, "quarter"),
        (("GET", f"/repo/director/{car}%00/metadata/targets.json", {}), 404, "no such"),
        (("GET", "/repo/director/X%00/metadata/1.root.json", {}), 404, "no such"),
        (("GET", "/repo/image/targets/a%00b", {}), 404, "no such"),
        (("GET", "/repo/image/metadata/1.root%00.json", {}), 404, "no such"),
    ]
    metadata = MetaData()
    metadata.reflect(env.runtime.engine)
    before = snapshot(env.runtime.engine, metadata)
    for (method, path, kwargs), status, words in attempts:
        headers = {"content-type": "application/json"} if "content" in kwargs else None
        resp = await env.client.request(method, path, headers=headers, **kwargs)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text)
        assert words in resp.json()["detail"], (path, resp.text)
        assert snapshot(env.runtime.engine, metadata) == before, (method, path, resp.text)
    assert (await env.client.get("/api/v1/recalls")).status_code == 200
    assert (await env.client.get(f"/api/v1/vehicles/{car}")).status_code == 200


async def test_too_long_texts_are_counted_in_characters(env: Env) -> None:
    """Outside test (issue 18): an optional text over its limit was refused as "at most 64 items"."""
    fresh = vehicle(vin(3))
    release = (await upload(env.client)).json()
    attempts: list[tuple[Request, str, int]] = [
        (_json("/api/v1/vehicles", fresh | {"make": "M" * 65}), "make", 64),
        (_json("/api/v1/vehicles", fresh | {"model": "S" * 65}), "model", 64),
        (_json("/api/v1/recalls", recall_body(release["id"], "24V-558") | {"manufacturer_number": "N" * 65}), "", 64),
        (_json("/api/v1/recalls", recall_body(release["id"], "24V-559", models=["S" * 65])), "models[0]", 64),
    ]
    for (method, path, kwargs), field, limit in attempts:
        answer = await env.client.request(method, path, **kwargs)
        assert answer.status_code == 422, (path, answer.text)
        detail = answer.json()["detail"]
        assert field in detail, detail
        assert f"at most {limit} characters" in detail, detail
        assert "items" not in detail, detail
