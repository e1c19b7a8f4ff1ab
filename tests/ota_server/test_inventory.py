"""The inventory from the car's signed version manifests: verified, ordered, judged, used."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import CryptoSigner
from sqlalchemy import event, select

from firmware_bundles import topics
from firmware_bundles.bundle import sample_image
from firmware_bundles.messages import (
    EcuManifest,
    FailureReason,
    ManifestReason,
    ReportState,
    VersionManifest,
    encode,
)
from firmware_bundles.report_signing import sign_report
from firmware_bundles.uptane import bundle_target_path
from ota_server.db.models import CampaignEcu, CampaignVehicle
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import (
    HW,
    REPORT_KEYS,
    bundle_bytes,
    provision,
    recall_body,
    remedied,
    report,
    upload,
    vehicle,
    vin,
)

FIX_IMAGE = hashlib.sha256(sample_image(HW, "1.1.0", size=4096)).hexdigest()
TAMPERED = "ab" * 32


def manifest(
    vin_: str,
    counter: int,
    *,
    version: str = "1.0.0",
    image_sha256: str | None = None,
    serial: str | None = None,
    signer: CryptoSigner | None = None,
    topic_vin: str | None = None,
    reason: ManifestReason = ManifestReason.DAILY,
    hardware_id: str = HW,
    target_path: str | None = None,
) -> tuple[str, bytes]:
    """A version manifest of the car's one ECU, signed with ``signer`` or the VIN's provisioned key."""
    message = VersionManifest(
        vin=vin_,
        counter=counter,
        reason=reason,
        agent_version="test",
        ecus=(
            EcuManifest(
                ecu_serial=serial or f"S-{vin_[-6:]}",
                hardware_id=hardware_id,
                version=version,
                image_sha256=image_sha256,
                image_length=4096 if image_sha256 else None,
                target_path=target_path,
            ),
        ),
        sent_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    key = signer or REPORT_KEYS[vin_]
    return topics.status_topic(topic_vin or vin_), encode(sign_report(message, key))


async def _registered(env: Env, vins: list[str]) -> None:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in vins]})
    assert resp.status_code == 201, resp.text
    await provision(env.client, vins)


async def _launch_seen(env: Env, recall_id: int) -> tuple[Any, list[str]]:
    """Launch ``recall_id``, recording every SQL statement the server sends meanwhile (normalised)."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()).lower())

    event.listen(env.runtime.engine, "before_cursor_execute", seen)
    try:
        launched = await env.client.post(f"/api/v1/recalls/{recall_id}/launch")
    finally:
        event.remove(env.runtime.engine, "before_cursor_execute", seen)
    return launched, statements


async def _ecu(env: Env, vin_: str) -> dict[str, Any]:
    body = await env.get_json(f"/api/v1/vehicles/{vin_}")
    ecus = body["ecus"]
    assert isinstance(ecus, list)
    first: dict[str, Any] = ecus[0]
    return first


async def _stats(env: Env) -> dict[str, Any]:
    return await env.get_json("/api/v1/stats/ingest")


async def _launch(env: Env, **population: Any) -> dict[str, Any]:
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"], **population))
    assert recall.status_code == 201, recall.text
    campaign = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert campaign.status_code == 201, campaign.text
    body: dict[str, Any] = campaign.json()
    return body


async def test_a_manifest_moves_the_inventory_and_last_seen(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    before = await _ecu(env, v)
    assert before["source"] == "declared" and before["reported_at"] is None
    assert before["installed_version"] == before["declared_version"] == "1.0.0"
    assert (await env.get_json(f"/api/v1/vehicles/{v}"))["last_seen"] is None

    env.clock.advance(60)
    await env.inject(manifest(v, 1, version="0.9.0"))
    after = await _ecu(env, v)
    assert after["installed_version"] == "0.9.0" and after["declared_version"] == "1.0.0"
    assert after["source"] == "reported"
    assert datetime.fromisoformat(after["reported_at"]) == env.clock.now
    assert datetime.fromisoformat(str((await env.get_json(f"/api/v1/vehicles/{v}"))["last_seen"])) == env.clock.now
    assert (await _stats(env))["manifests"] == 1


async def test_last_seen_moves_on_a_verified_report_too(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    campaign = await _launch(env)
    nonce = (await env.nonces())[v]
    env.clock.advance(120)
    await env.inject(report(campaign["id"], v, nonce, ReportState.NOTIFIED))
    seen = (await env.get_json(f"/api/v1/vehicles/{v}"))["last_seen"]
    assert datetime.fromisoformat(str(seen)) == env.clock.now


async def test_forged_replayed_and_another_cars_manifests_are_refused_and_counted(either_env: Env) -> None:
    env = either_env
    v, other = vin(1), vin(2)
    await _registered(env, [v, other])
    await env.inject(manifest(v, 5, version="1.0.0"))
    stranger = CryptoSigner.generate_ed25519()
    await env.inject(
        manifest(v, 6, version="6.6.6", signer=stranger),  # forged: a key nobody registered
        manifest(v, 7, version="6.6.6", signer=REPORT_KEYS[other]),  # signed by another car's key
        manifest(other, 8, version="6.6.6", topic_vin=v),  # another car's manifest on this car's topic
        manifest(v, 4, version="6.6.6"),  # older than the last accepted
        manifest(v, 5, version="6.6.6"),  # same counter, other content: a replay, not a redelivery
    )
    await env.inject(manifest(v, 5, version="1.0.0"))  # the accepted one delivered again (QoS 1)
    stats = await _stats(env)
    rejected = stats["rejected"]
    assert rejected["unknown_key"] == 1
    assert rejected["key_of_another_vehicle"] == 1
    assert rejected["topic_vin_mismatch"] == 1
    assert rejected["manifest_replayed"] == 2
    assert stats["manifests"] == 1 and stats["duplicates"] == 1
    assert (await _ecu(env, v))["installed_version"] == "1.0.0"
    assert (await _ecu(env, other))["source"] == "declared"
    metrics = (await env.client.get("/metrics")).text
    assert 'ota_messages_rejected_total{reason="manifest_replayed"} 2.0' in metrics


async def test_a_tampered_image_is_a_discrepancy_listed_audited_and_counted(either_env: Env) -> None:
    env = either_env
    v = vin(1)
    await _registered(env, [v])
    assert (await upload(env.client)).status_code == 201
    await env.inject(manifest(v, 1, version="1.1.0", image_sha256=TAMPERED))
    await env.inject(manifest(v, 2, version="1.1.0", image_sha256=TAMPERED))  # same finding: stored once
    page = await env.get_json(f"/api/v1/discrepancies?vin={v}")
    items = page["items"]
    assert isinstance(items, list) and len(items) == 1
    [found] = items
    assert found["kind"] == "unassigned_image" and found["image_sha256"] == TAMPERED
    assert (await env.get_json("/api/v1/discrepancies?kind=unknown_version"))["items"] == []
    audit_page = await env.get_json("/api/v1/audit")
    entries = audit_page["items"]
    assert isinstance(entries, list)
    assert any("unassigned_image" in (e.get("detail") or "") and e["target"].get("vin") == v for e in entries)
    metrics = (await env.client.get("/metrics")).text
    assert 'ota_discrepancies{kind="unassigned_image"} 1.0' in metrics
    # The genuine image of a known release is no finding.
    await env.inject(manifest(v, 3, version="1.1.0", image_sha256=FIX_IMAGE))
    assert len((await env.get_json(f"/api/v1/discrepancies?vin={v}"))["items"]) == 1


async def test_an_unknown_version_is_a_discrepancy(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    await env.inject(manifest(v, 1, version="1.0.0"))  # its declared factory version: fine
    assert (await env.get_json("/api/v1/discrepancies"))["items"] == []
    await env.inject(manifest(v, 2, version="3.1.4"))
    [found] = (await env.get_json("/api/v1/discrepancies"))["items"]
    assert found["kind"] == "unknown_version" and found["version"] == "3.1.4"


async def test_a_workshop_flash_of_the_fix_is_the_remedy(either_env: Env) -> None:
    env = either_env
    v = vin(1)
    await _registered(env, [v])
    campaign = await _launch(env)
    await env.inject(manifest(v, 1, version="1.1.0", image_sha256=FIX_IMAGE))
    status = await env.get_json(f"/api/v1/vehicles/{v}/status")
    [entry] = status["campaigns"]
    assert entry["campaign_id"] == campaign["id"]
    assert entry["state"] == "remedied_at_dealer" and entry["reason"] == "reported_by_manifest"
    assert (await env.get_json("/api/v1/discrepancies"))["items"] == []


async def test_a_remedied_car_whose_manifest_says_otherwise_is_a_discrepancy(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    await _launch(env)
    await env.inject(manifest(v, 1, version="1.1.0", image_sha256=FIX_IMAGE))  # remedied by the flash
    await env.inject(manifest(v, 2, version="1.0.0"))  # ... and back on the old version
    [found] = (await env.get_json("/api/v1/discrepancies"))["items"]
    assert found["kind"] == "remedied_mismatch" and found["version"] == "1.0.0"


async def test_population_goes_by_the_reported_version(env: Env) -> None:
    old, new = vin(1), vin(2)
    await _registered(env, [old, new])
    await env.inject(manifest(new, 1, version="1.0.5"))  # registered as 1.0.0, runs 1.0.5
    campaign = await _launch(env, installed_versions={"max": "1.0.1"})
    assert campaign["population"] == 1
    statuses = (await env.get_json(f"/api/v1/vehicles/{new}/status"))["campaigns"]
    assert statuses == []


async def test_a_car_whose_manifest_shows_the_fix_is_already_remedied_at_launch(env: Env) -> None:
    done, todo = vin(1), vin(2)
    await _registered(env, [done, todo])
    release = await upload(env.client)
    assert release.status_code == 201
    await env.inject(manifest(done, 1, version="1.1.0", image_sha256=FIX_IMAGE))
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"]))
    assert recall.status_code == 201, recall.text
    launched = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert launched.status_code == 201, launched.text
    progress = await env.get_json(f"/api/v1/campaigns/{launched.json()['id']}/progress")
    counts = progress["counts"]
    assert isinstance(counts, dict) and counts["remedied"] == 1 and progress["population"] == 2
    [entry] = (await env.get_json(f"/api/v1/vehicles/{done}/status"))["campaigns"]
    assert entry["reason"] == "already_remedied"
    assert set(await env.nonces()) == {todo}  # no notice for a car with nothing to install


async def test_a_launch_stores_every_car_and_ecu_row_in_one_stream_on_either_database(either_env: Env) -> None:
    """A 30,000-car launch's executemany inserts were 2 s of its approval (issue 19): the campaign's
    cars and their affected ECUs now go by COPY on PostgreSQL, the INSERT on SQLite, the same rows."""
    env = either_env
    done, *todo = [vin(n) for n in range(1, 5)]
    await _registered(env, [done, *todo])
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    await env.inject(manifest(done, 1, version="1.1.0", image_sha256=FIX_IMAGE))
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"]))
    assert recall.status_code == 201, recall.text
    launched, statements = await _launch_seen(env, recall.json()["id"])
    assert launched.status_code == 201, launched.text
    campaign_id = launched.json()["id"]
    with env.runtime.sessions() as session:
        cars = {
            cv.vin: cv
            for cv in session.scalars(select(CampaignVehicle).where(CampaignVehicle.campaign_id == campaign_id))
        }
        ecus = session.execute(
            select(CampaignEcu.vin, CampaignEcu.ecu_serial, CampaignEcu.hardware_id, CampaignEcu.release_id).where(
                CampaignEcu.campaign_id == campaign_id
            )
        ).all()
    assert sorted(cars) == sorted([done, *todo])
    assert {v: cars[v].state for v in cars} == {done: "remedied"} | {v: "pending" for v in todo}
    assert cars[done].reason == "already_remedied" and cars[done].progress_rank >= 0
    assert all(cars[v].reason is None and cars[v].progress_rank == -1 and cars[v].attempt == 0 for v in todo)
    assert len({cv.nonce for cv in cars.values()}) == len(cars) and all(cv.nonce for cv in cars.values())
    assert all(cv.deferrals == 0 and cv.retries == 0 and cv.wave == 0 for cv in cars.values())  # column defaults
    assert sorted(ecus) == sorted((v, f"S-{v[-6:]}", HW, release.json()["id"]) for v in [done, *todo])
    if env.runtime.engine.dialect.name == "postgresql":
        for table in ("campaign_vehicles", "campaign_ecus"):
            assert any(s.startswith(f'copy "{table}"') for s in statements), statements
            assert not any(s.startswith(f"insert into {table}") for s in statements), statements
    assert set(await env.nonces()) == set(todo)


async def test_the_r156_record_shows_the_reported_versions_and_rxswin_after_a_remedy(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    await env.inject(manifest(v, 1, version="1.0.0"))
    data = {"hardware_id": HW, "version": "1.1.0", "release_counter": "2", "rxswin": "R156-ECU-MAIN-2"}
    files = {"file": ("fix.otab", bundle_bytes(), "application/octet-stream")}
    release = await env.client.post("/api/v1/releases", files=files, data=data)
    assert release.status_code == 201, release.text
    assert release.json()["rxswin"] == "R156-ECU-MAIN-2"
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"]))
    assert recall.status_code == 201, recall.text
    cid = (await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")).json()["id"]
    env.clock.advance(600)
    nonce = (await env.nonces())[v]
    await env.inject(report(cid, v, nonce, ReportState.REBOOTING))
    # As agents do: the install manifest goes out just before the remedied report.
    await env.inject(manifest(v, 2, version="1.1.0", image_sha256=FIX_IMAGE, reason=ManifestReason.INSTALL))
    env.clock.advance(1)
    await env.inject(remedied(cid, v, nonce))
    body = await env.get_json(f"/api/v1/reports/recalls/{recall.json()['id']}/type-approval?format=json")
    [row] = body["rows"]
    assert (row["version_before"], row["version_after"]) == ("1.0.0", "1.1.0")
    assert row["installed_version"] == "1.1.0" and row["version_source"].startswith("manifest")
    assert (row["rxswin_before"], row["rxswin_after"]) == ("none declared", "R156-ECU-MAIN-2")
    assert row["outcome"] == "remedied" and datetime.fromisoformat(row["install_time"]) == env.clock.now
    assert row["check"] == "compatible"
    assert all(row[column] not in (None, "") for column in row)


async def test_the_timeline_shows_the_manifests_the_reported_state_and_the_discrepancies(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    assert (await upload(env.client)).status_code == 201
    declared = await env.get_json(f"/api/v1/vehicles/{v}/timeline")
    assert declared["ecus"][0]["source"] == "declared"
    env.clock.advance(30)
    await env.inject(manifest(v, 1, version="1.1.0", image_sha256=TAMPERED, reason=ManifestReason.START))
    body = await env.get_json(f"/api/v1/vehicles/{v}/timeline")
    [ecu] = body["ecus"]
    assert ecu["source"] == "reported" and ecu["installed_version"] == "1.1.0"
    assert datetime.fromisoformat(ecu["reported_at"]) == env.clock.now
    kinds = [e["kind"] for e in body["entries"]]
    assert "manifest" in kinds and "discrepancy" in kinds
    [entry] = [e for e in body["entries"] if e["kind"] == "manifest"]
    assert "1.1.0" in entry["summary"] and entry["campaign_id"] is None
    [found] = body["discrepancies"]
    assert found["kind"] == "unassigned_image"


async def test_an_ecu_reporting_other_hardware_is_not_assigned_the_image(env: Env) -> None:
    right, wrong = vin(1), vin(2)
    await _registered(env, [right, wrong])
    await env.inject(manifest(wrong, 1, hardware_id="ecu-other"))  # registered as ecu-main
    [found] = (await env.get_json("/api/v1/discrepancies"))["items"]
    assert found["kind"] == "hardware_mismatch" and found["vin"] == wrong
    campaign = await _launch(env)
    assert campaign["population"] == 1
    await env.tick()
    assert set(await env.nonces()) == {right}


async def test_vin_status_feed_and_completion_report_use_the_manifests(env: Env) -> None:
    flashed, silent = vin(1), vin(2)
    await _registered(env, [flashed, silent])
    campaign = await _launch(env)
    env.clock.advance(60)
    await env.inject(manifest(flashed, 1, version="1.1.0", image_sha256=FIX_IMAGE))  # a workshop flash
    recall_id = campaign["recall_id"]
    feed = await env.client.get(f"/api/v1/reports/recalls/{recall_id}/vin-status", params={"format": "json"})
    rows = {row["vin"]: row for row in feed.json()["rows"]}
    assert (rows[flashed]["status"], rows[flashed]["reason"]) == ("remedied", "at a dealer")
    assert rows[flashed]["installed_versions"] == f"{HW} 1.1.0"
    assert datetime.fromisoformat(rows[flashed]["reported_at"]) == env.clock.now
    assert (rows[silent]["installed_versions"], rows[silent]["reported_at"]) == (
        f"{HW} 1.0.0",
        "declared at registration",
    )
    completion = await env.get_json(f"/api/v1/reports/recalls/{recall_id}/completion?format=json")
    summary = completion["summary"]
    assert isinstance(summary, dict)
    assert summary["remedied_at_dealer"] == 1 and summary["remedies_confirmed_by_manifest"] == 1


async def test_the_discrepancy_list_pages_and_refuses_a_malformed_vin(env: Env) -> None:
    vins = [vin(n) for n in range(1, 4)]
    await _registered(env, vins)
    await env.inject(*(manifest(v, 1, version="9.9.9") for v in vins))
    first = await env.get_json("/api/v1/discrepancies?limit=2")
    assert len(first["items"]) == 2 and first["next_cursor"] is not None
    rest = await env.get_json(f"/api/v1/discrepancies?limit=2&cursor={first['next_cursor']}")
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    seen = {d["vin"] for d in [*first["items"], *rest["items"]]}
    assert seen == set(vins)
    ids = [d["id"] for d in [*first["items"], *rest["items"]]]
    assert ids == sorted(ids, reverse=True)  # newest first
    oldest = await env.get_json("/api/v1/discrepancies?limit=2&sort=id")
    assert [d["id"] for d in oldest["items"]] == sorted(ids)[:2]
    assert (await env.client.get("/api/v1/discrepancies", params={"cursor": "17"})).status_code == 422
    bad = await env.client.get("/api/v1/discrepancies", params={"vin": "not a vin"})
    assert bad.status_code == 422 and "not a valid VIN" in bad.text
    # a time is ISO 8601: pydantic alone would read 0.5 as half a second after 1970
    unix = await env.client.get("/api/v1/discrepancies", params={"since": "0.5"})
    assert unix.status_code == 422 and "ISO 8601" in unix.text
    since = await env.get_json("/api/v1/discrepancies?since=2000-01-01T00:00:00Z")
    assert len(since["items"]) == 3


async def test_the_failure_breakdown_goes_by_the_reported_version(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    await env.inject(manifest(v, 1, version="1.0.5"))  # registered as 1.0.0
    campaign = await _launch(env)
    nonce = (await env.nonces())[v]
    await env.inject(report(campaign["id"], v, nonce, ReportState.FAILED, reason=FailureReason.DOWNLOAD_FAILED))
    body = await env.get_json(f"/api/v1/campaigns/{campaign['id']}/dashboard")
    failures = body["failures"]
    assert isinstance(failures, dict)
    assert [s["value"] for s in failures["by_software_version"]] == ["1.0.5"]


async def test_a_car_installing_over_the_air_is_left_to_its_own_report(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    campaign = await _launch(env)
    nonce = (await env.nonces())[v]
    await env.inject(report(campaign["id"], v, nonce, ReportState.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED))
    # Its retry installs over the air (the manifest names the Director's target) and the install
    # manifest comes before the remedied report: the car ends remedied over the air, not at a dealer.
    target = bundle_target_path(HW, "1.1.0")
    await env.inject(manifest(v, 1, version="1.1.0", image_sha256=FIX_IMAGE, target_path=target))
    [entry] = (await env.get_json(f"/api/v1/vehicles/{v}/status"))["campaigns"]
    assert entry["state"] == "failed"
    await env.inject(
        report(campaign["id"], v, nonce, ReportState.REMEDIED, attempt=2, installed_version="1.1.0", health_ok=True)
    )
    [entry] = (await env.get_json(f"/api/v1/vehicles/{v}/status"))["campaigns"]
    assert entry["state"] == "remedied"


async def test_a_late_joiner_whose_manifest_shows_the_fix_is_already_remedied(env: Env) -> None:
    first, late = vin(1), vin(2)
    await _registered(env, [first])
    release = await upload(env.client)
    assert release.status_code == 201
    body = {**recall_body(release.json()["id"], models=["Sedan"]), "dynamic": True}
    recall = await env.client.post("/api/v1/recalls", json=body)
    assert recall.status_code == 201, recall.text
    launched = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert launched.status_code == 201, launched.text
    cid = launched.json()["id"]
    # Paused, the campaign takes no joiner: the late car's manifest arrives before it joins.
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/pause", json={"reason": "hold"})).status_code == 200
    await _registered(env, [late])
    await env.inject(manifest(late, 1, version="1.1.0", image_sha256=FIX_IMAGE))
    assert (await env.get_json(f"/api/v1/vehicles/{late}/status"))["campaigns"] == []
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={"reason": "go"})).status_code == 200
    await env.tick()
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    counts = progress["counts"]
    assert progress["population"] == 2 and isinstance(counts, dict) and counts["remedied"] == 1, counts
    [entry] = (await env.get_json(f"/api/v1/vehicles/{late}/status"))["campaigns"]
    assert entry["reason"] == "already_remedied"
    assert set(await env.nonces()) == {first}  # no notice for the late car with nothing to install


async def test_a_factory_image_that_changes_with_no_install_is_a_discrepancy(env: Env) -> None:
    """A version no release names has no known image to compare with; its first reported hash is
    the baseline, and a new hash under the same version with no install behind it is a finding."""
    v = vin(1)
    await _registered(env, [v])
    await env.inject(manifest(v, 1, version="1.0.0", image_sha256="a" * 64))
    await env.inject(manifest(v, 2, version="1.0.0", image_sha256="a" * 64))  # unchanged: no finding
    assert (await env.get_json(f"/api/v1/discrepancies?vin={v}"))["items"] == []
    await env.inject(manifest(v, 3, version="1.0.0", image_sha256="b" * 64))
    [found] = (await env.get_json(f"/api/v1/discrepancies?vin={v}&kind=image_changed"))["items"]
    assert found["image_sha256"] == "b" * 64 and "a" * 12 in found["detail"]
    listed = await env.get_json("/api/v1/vehicles?discrepancy=image_changed")
    assert [car["vin"] for car in listed["items"]] == [v]


async def test_a_launch_reads_the_cars_ecus_by_index_not_by_joining_the_fleets_ecus(env: Env) -> None:
    """Found at 30,000 cars (issue 19): ``already_remedied`` joined vehicles with ecus once per chunk of
    500 VINs, and right after every car's manifest PostgreSQL hashed the whole ecus table each time:
    ~0.6 s a chunk, 20 s of the launch's approval. It then looked them up by vehicle id; now it reads
    nothing more: the population's own rows say what each ECU runs (issue 19)."""
    done, todo = vin(1), vin(2)
    await _registered(env, [done, todo])
    release = await upload(env.client)
    await env.inject(manifest(done, 1, version="1.1.0", image_sha256=FIX_IMAGE))
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"]))
    launched, statements = await _launch_seen(env, recall.json()["id"])
    assert launched.status_code == 201, launched.text
    # no read of every reported ECU: the one read of ECUs is the population's (what each runs, selected)
    ecu_reads = [s for s in statements if s.startswith("select") and "ecus" in s]
    assert ecu_reads and all("ecus.reported_at is not null as" in s for s in ecu_reads), ecu_reads
    assert not [s for s in ecu_reads if "ecus.reported_at is not null" in s.split(" where ", 1)[-1]]
    [entry] = (await env.get_json(f"/api/v1/vehicles/{done}/status"))["campaigns"]
    assert entry["reason"] == "already_remedied"
    assert set(await env.nonces()) == {todo}
