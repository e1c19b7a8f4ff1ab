"""Vehicle identity and signed reports: provisioning, and every way a report can be forged or replayed."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from tuf.api.metadata import Metadata, Root

from firmware_bundles.messages import ReportState, parse_notice
from firmware_bundles.report_signing import generate_report_key, load_report_signer
from ota_server.db.models import Vehicle
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import REPORT_KEYS, launched, recall_body, report, upload, vehicle, vin

S = ReportState


async def _stats(env: Env) -> dict[str, Any]:
    return await env.get_json("/api/v1/stats/ingest")


async def _counts(env: Env, campaign_id: int) -> dict[str, int]:
    body = await env.get_json(f"/api/v1/campaigns/{campaign_id}/progress")
    counts: dict[str, int] = body["counts"]
    return counts


async def test_provision_issues_key_and_certificate_once(env: Env) -> None:
    v = vin(1)
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(v))).status_code == 201
    resp = await env.client.post(f"/api/v1/vehicles/{v}/provision")
    assert resp.status_code == 200, resp.text
    body = resp.json()

    signer = load_report_signer(body["report_private_key"].encode())
    assert signer.public_key.keyid == body["keyid"]
    cert = x509.load_pem_x509_certificate(body["client_certificate"].encode())
    ca = x509.load_pem_x509_certificate(body["ca_certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == v
    cert.verify_directly_issued_by(ca)
    client_key = x509.load_pem_x509_certificate(body["client_certificate"].encode()).public_key()
    assert isinstance(client_key, ec.EllipticCurvePublicKey)
    assert body["agent_config"]["vin"] == v
    Metadata[Root].from_bytes(body["agent_config"]["director_root"].encode())

    # the server keeps the public key and the serial, never a private part
    with env.runtime.sessions() as session:
        row = session.scalars(select(Vehicle).where(Vehicle.vin == v)).one()
        assert (row.report_keyid, row.certificate_serial) == (body["keyid"], format(cert.serial_number, "x"))
        assert "PRIVATE" not in json.dumps(row.report_key)
    assert (env.runtime.settings.ca_dir / "ca.crt").read_bytes().decode() == body["ca_certificate"]


async def test_provision_refuses_unknown_and_invalid_vins(env: Env) -> None:
    assert (await env.client.post(f"/api/v1/vehicles/{vin(1)}/provision")).status_code == 404
    resp = await env.client.post("/api/v1/vehicles/provision", json={"vins": ["NOT-A-VIN"]})
    assert resp.status_code == 422 and "vins[0]" in resp.text


async def test_batch_provision_without_certificates(env: Env) -> None:
    vins = [vin(n) for n in range(1, 1001)]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in vins]})
    assert resp.status_code == 201, resp.text
    resp = await env.client.post("/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": vins})
    assert resp.status_code == 200, resp.text
    identities = resp.json()["identities"]
    assert [i["vin"] for i in identities] == vins
    assert len({i["keyid"] for i in identities}) == 1000
    assert all(i["client_certificate"] is None for i in identities)
    assert not env.runtime.settings.ca_dir.exists()  # no CA needed, none made


async def test_signed_reports_are_accepted_and_duplicates_counted_once(env: Env) -> None:
    v = vin(1)
    cid = (await launched(env.client, [v]))["id"]
    nonce = (await env.nonces())[v]
    message = report(cid, v, nonce, S.NOTIFIED)
    await env.inject(message, message)  # a QoS 1 duplicate, byte for byte
    stats = await _stats(env)
    assert (stats["accepted"], stats["duplicates"], stats["rejected"]) == (1, 1, {})


async def test_forged_and_replayed_reports_are_rejected_by_reason(env: Env) -> None:
    a, b = vin(1), vin(2)
    cid = (await launched(env.client, [a, b]))["id"]
    nonces = await env.nonces()
    topic, genuine = report(cid, a, nonces[a], S.DOWNLOADING)
    await env.inject((topic, genuine))

    unsigned = json.loads(genuine)
    del unsigned["signature"]
    modified = json.loads(genuine)
    modified["state"] = "rebooting"  # a captured report, changed and replayed
    forged_sig = json.loads(genuine)
    forged_sig["signature"]["sig"] = "00" * 64
    await env.inject(
        (topic, json.dumps(unsigned).encode()),
        (topic, json.dumps(modified).encode()),
        (topic, json.dumps(forged_sig).encode()),
        report(cid, a, nonces[a], S.INSTALLING, signer=REPORT_KEYS[b]),  # B's key on A's report
        report(cid, a, nonces[a], S.INSTALLING, signer=generate_report_key()),  # a key nobody registered
        report(cid, a, nonces[b], S.INSTALLING),  # genuinely signed, but not A's nonce
    )
    stats = await _stats(env)
    assert stats["accepted"] == 1
    assert stats["rejected"] == {
        "missing_signature": 1,
        "bad_signature": 2,
        "key_of_another_vehicle": 1,
        "unknown_key": 1,
        "wrong_nonce": 1,
    }
    assert (await _counts(env, cid))["downloading"] == 1


async def test_reprovisioning_retires_the_old_key(env: Env) -> None:
    v = vin(1)
    cid = (await launched(env.client, [v]))["id"]
    nonce = (await env.nonces())[v]
    old = REPORT_KEYS[v]
    resp = await env.client.post(f"/api/v1/vehicles/{v}/provision", params={"certificate": "false"})
    assert resp.status_code == 200
    new = load_report_signer(resp.json()["report_private_key"].encode())
    await env.inject(report(cid, v, nonce, S.NOTIFIED, signer=old), report(cid, v, nonce, S.DOWNLOADING, signer=new))
    stats = await _stats(env)
    assert (stats["accepted"], stats["rejected"]) == (1, {"unknown_key": 1})


async def test_a_report_from_an_earlier_campaign_cannot_move_a_later_one(env: Env) -> None:
    v = vin(1)
    first = (await launched(env.client, [v]))["id"]
    old_nonce = (await env.nonces())[v]
    old_remedied = report(first, v, old_nonce, S.REMEDIED, installed_version="1.1.0", health_ok=True)
    await env.inject(old_remedied)
    release = await upload(env.client, version="1.2.0", counter=3)
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"], "24V-124"))
    second = (await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")).json()["id"]
    new_nonce = {n.vin: n.nonce for n in map(parse_notice, (m.payload for m in env.publisher.messages[-1:]))}[v]
    assert new_nonce != old_nonce

    # the old campaign's report again (a duplicate) and the car's old nonce on the new campaign
    stale = report(second, v, old_nonce, S.REMEDIED, installed_version="1.2.0", health_ok=True)
    await env.inject(old_remedied, stale)
    stats = await _stats(env)
    assert (stats["accepted"], stats["duplicates"], stats["rejected"]) == (1, 1, {"wrong_nonce": 1})
    assert (await _counts(env, second))["pending"] == 1


# --- Certificates: revocation on re-provisioning, `revoke`, and the car's own renewal (issue 15, item 2) ---


def _revoked_serials(env: Env) -> set[str]:
    crl = x509.load_pem_x509_crl(env.runtime.settings.crl_file.read_bytes())
    ca = x509.load_pem_x509_certificate((env.runtime.settings.ca_dir / "ca.crt").read_bytes())
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public_key)
    return {format(entry.serial_number, "x") for entry in crl}


async def _provisioned(env: Env, v: str) -> dict[str, Any]:
    if (await env.client.get(f"/api/v1/vehicles/{v}")).status_code == 404:
        assert (await env.client.post("/api/v1/vehicles", json=vehicle(v))).status_code == 201
    resp = await env.client.post(f"/api/v1/vehicles/{v}/provision")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _serial(pem: str) -> str:
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


async def test_provisioning_again_revokes_the_old_certificate(env: Env) -> None:
    v = vin(1)
    first = await _provisioned(env, v)
    second = await _provisioned(env, v)
    revoked = _revoked_serials(env)
    assert _serial(first["client_certificate"]) in revoked
    assert _serial(second["client_certificate"]) not in revoked


async def test_revoke_puts_the_cars_certificate_in_the_crl(env: Env) -> None:
    v, other = vin(1), vin(2)
    body = await _provisioned(env, v)
    kept = await _provisioned(env, other)
    resp = await env.client.post(f"/api/v1/vehicles/{v}/certificate/revoke")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"vin": v, "revoked": [_serial(body["client_certificate"])]}
    assert _revoked_serials(env) == {_serial(body["client_certificate"])}
    assert _serial(kept["client_certificate"]) not in _revoked_serials(env)
    with env.runtime.sessions() as session:
        assert session.scalars(select(Vehicle.certificate_serial).where(Vehicle.vin == v)).one() is None
    # an operator's token is needed
    anonymous = await env.client.post(f"/api/v1/vehicles/{v}/certificate/revoke", headers={"Authorization": ""})
    assert anonymous.status_code == 401


def _renewal(v: str, key_pem: str, cert_pem: str) -> tuple[ec.EllipticCurvePrivateKey, dict[str, str]]:
    from vehicle_agent.renewal import renewal_request

    new_key = ec.generate_private_key(ec.SECP256R1())
    return new_key, renewal_request(v, new_key, key_pem.encode(), cert_pem.encode())


async def test_a_car_renews_its_certificate_with_its_current_key(env: Env) -> None:
    v = vin(1)
    body = await _provisioned(env, v)
    env.clock.advance(800 * 86400)  # 25 days before the 825-day certificate ends
    new_key, request = _renewal(v, body["client_key"], body["client_certificate"])
    resp = await env.client.post(f"/api/v1/vehicles/{v}/certificate/renew", json=request, headers={"Authorization": ""})
    assert resp.status_code == 200, resp.text
    renewed = x509.load_pem_x509_certificate(resp.json()["client_certificate"].encode())
    renewed.verify_directly_issued_by(x509.load_pem_x509_certificate(body["ca_certificate"].encode()))
    assert renewed.public_key() == new_key.public_key()
    assert renewed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == v
    assert renewed.not_valid_after_utc > env.clock.now + timedelta(days=800)
    assert _revoked_serials(env) == {_serial(body["client_certificate"])}

    # the same request again (its answer lost): the same certificate, nothing new issued
    again = await env.client.post(f"/api/v1/vehicles/{v}/certificate/renew", json=request)
    assert again.status_code == 200 and again.json()["client_certificate"] == resp.json()["client_certificate"]
    # ... but the replaced certificate can never renew for another key
    _, replay = _renewal(v, body["client_key"], body["client_certificate"])
    assert (await env.client.post(f"/api/v1/vehicles/{v}/certificate/renew", json=replay)).status_code == 403


async def test_renewal_needs_the_cars_current_key_and_certificate(env: Env) -> None:
    v, other = vin(1), vin(2)
    body = await _provisioned(env, v)
    stranger = await _provisioned(env, other)
    url = f"/api/v1/vehicles/{v}/certificate/renew"
    # another car's certificate and key
    _, request = _renewal(v, stranger["client_key"], stranger["client_certificate"])
    assert (await env.client.post(url, json=request)).status_code == 403
    # the right certificate, signed by another key
    _, request = _renewal(v, stranger["client_key"], body["client_certificate"])
    assert (await env.client.post(url, json=request)).status_code == 403
    # a certificate for this VIN from another CA
    from ota_server.infra.pki import CertificateAuthority

    forged = CertificateAuthority.create(env.clock.now).issue_client(v, env.clock.now)
    _, request = _renewal(v, forged.key_pem.decode(), forged.cert_pem.decode())
    assert (await env.client.post(url, json=request)).status_code == 403
    # a revoked certificate (replaced by provisioning)
    await _provisioned(env, v)
    _, request = _renewal(v, body["client_key"], body["client_certificate"])
    assert (await env.client.post(url, json=request)).status_code == 403
    # an expired one: the car must be provisioned again
    current = await _provisioned(env, v)
    env.clock.advance(826 * 86400)
    _, request = _renewal(v, current["client_key"], current["client_certificate"])
    assert (await env.client.post(url, json=request)).status_code == 403
    # garbage is a 422, not a 500
    assert (await env.client.post(url, json={**request, "csr": "not a csr"})).status_code == 422


async def test_revocation_and_renewal_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        v = vin(1)
        first = await _provisioned(env, v)
        body = await _provisioned(env, v)
        _, request = _renewal(v, body["client_key"], body["client_certificate"])
        resp = await env.client.post(f"/api/v1/vehicles/{v}/certificate/renew", json=request)
        assert resp.status_code == 200, resp.text
        assert _revoked_serials(env) == {_serial(first["client_certificate"]), _serial(body["client_certificate"])}
