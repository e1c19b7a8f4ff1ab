"""A person, always: a recall cannot reach owners without a notice and someone to call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import OWNER_NOTICE, recall_body, upload, vehicle, vin


async def _release(env: Env) -> int:
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)))).status_code == 201
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    release_id: int = release.json()["id"]
    return release_id


async def _file(env: Env, release_id: int, notice: dict[str, Any] | None) -> Any:
    body = recall_body(release_id)
    if notice is None:
        del body["owner_notice"]
    else:
        body["owner_notice"] = notice
    return await env.client.post("/api/v1/recalls", json=body)


async def test_a_recall_without_a_notice_is_refused_naming_every_missing_field(env: Env) -> None:
    release_id = await _release(env)
    resp = await _file(env, release_id, None)
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    for field in ("owner_notice,", "purpose", "what_changes", "expected_minutes", "unavailable_functions"):
        assert field in detail, detail
    assert "no default contact is configured (OTA_MANUFACTURER_CONTACT_NAME" in detail
    assert (await env.client.get("/api/v1/recalls")).json()["items"] == []


async def test_a_contact_without_role_or_email_is_refused_naming_them(env: Env) -> None:
    release_id = await _release(env)
    contact = {"name": "Dana Smith", "phone": "+1 555 0100"}
    resp = await _file(env, release_id, {**OWNER_NOTICE, "contact": contact})
    assert resp.status_code == 422
    assert resp.json()["detail"].endswith("missing: owner_notice.contact.role, owner_notice.contact.email")


async def test_a_notice_without_contact_takes_the_configured_default_and_keeps_it(tmp_path: Path) -> None:
    default = {
        "manufacturer_contact_name": "Acme recall desk",
        "manufacturer_contact_role": "Customer care",
        "manufacturer_contact_phone": "+39 02 1234",
        "manufacturer_contact_email": "recalls@acme.example",
    }
    notice = {k: v for k, v in OWNER_NOTICE.items() if k != "contact"}
    async with running(make_settings(tmp_path, **default)) as env:
        filed = await _file(env, await _release(env), notice)
        assert filed.status_code == 201, filed.text
    contact = {"name": "Acme recall desk", "role": "Customer care", "phone": "+39 02 1234"}
    assert filed.json()["owner_notice"]["contact"] == contact | {"email": "recalls@acme.example"}
    # What owners were told is fixed at filing: a later configuration does not change it.
    async with running(make_settings(tmp_path, manufacturer_contact_name="Someone else")) as env:
        stored = (await env.client.get(f"/api/v1/recalls/{filed.json()['id']}")).json()
    assert stored["owner_notice"]["contact"]["name"] == "Acme recall desk"


async def test_a_partial_default_is_no_default(tmp_path: Path) -> None:
    notice = {k: v for k, v in OWNER_NOTICE.items() if k != "contact"}
    async with running(make_settings(tmp_path, manufacturer_contact_name="Acme recall desk")) as env:
        resp = await _file(env, await _release(env), notice)
    assert resp.status_code == 422 and "owner_notice.contact (name, role, phone, email)" in resp.json()["detail"]


async def test_a_notice_too_long_for_the_cars_is_a_422_not_a_crash(env: Env) -> None:
    release_id = await _release(env)
    long_item = await _file(env, release_id, {**OWNER_NOTICE, "unavailable_functions": ["x" * 1025]})
    assert long_item.status_code == 422 and "unavailable_functions" in long_item.json()["detail"]
    long_contact = await _file(
        env, release_id, {**OWNER_NOTICE, "contact": {**OWNER_NOTICE["contact"], "phone": "1" * 65}}
    )
    assert long_contact.status_code == 422 and "contact.phone" in long_contact.json()["detail"]
