"""Nothing is stored from a rejected request: every POST route, fed bad bodies, leaves every table as it was.

The audit log is the one exception, on purpose: it records the refusal.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, func, select

from ota_server.db.models import AuditEntry
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import bundle_bytes, recall_body, upload, vehicle, vin
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
