"""Releases with the targets key offline: pending until ``ota releases sign``, then published.

The server never holds the targets key here (``ota keys init`` put it in an offline
directory); a signature by another key, or over other bytes, publishes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from firmware_bundles.uptane import Expiry
from ota_server.config import Settings
from ota_server.db.migrate import upgrade
from ota_server.db.session import make_engine, make_session_factory
from ota_server.signing import keyadmin
from ota_server.signing.keys import Keyring
from ota_server.signing.offline import signature_body, summary
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import HW, recall_body, upload, vehicle, verify

PENDING = "/api/v1/releases/pending-targets"
META = "/repo/image/metadata/"


def init_offline_keys(settings: Settings, offline: Path) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    with make_session_factory(engine)() as session:
        keyadmin.init(session, keyadmin.KeyDirs(offline, settings.keys_dir), Expiry(), datetime.now(UTC))
        session.commit()
    engine.dispose()


@pytest.fixture
async def offline_env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path / "data")
    init_offline_keys(settings, tmp_path / "offline")
    async with running(settings) as env:
        yield env


async def _file(env: Env, name: str) -> bytes:
    resp = await env.client.get(META + name)
    assert resp.status_code == 200, resp.text
    return resp.content


async def _sign(env: Env, offline: Path, payload: bytes | None = None) -> dict[str, Any]:
    payload = payload if payload is not None else (await env.client.get(PENDING)).content
    return signature_body(payload, await _file(env, "root.json"), Keyring([offline]))


async def _published_paths(env: Env) -> set[str]:
    return set(Metadata[Targets].from_bytes(await _file(env, "targets.json")).signed.targets)


async def _recall(env: Env, release_id: int) -> int:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle("1HGCM82633A004352")]})
    assert resp.status_code == 201, resp.text
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release_id))
    assert recall.status_code == 201, recall.text
    recall_id: int = recall.json()["id"]
    return recall_id


async def test_upload_waits_pending_until_signed_offline_then_publishes(offline_env: Env, tmp_path: Path) -> None:
    env = offline_env
    before = {name: await _file(env, name) for name in ("targets.json", "snapshot.json", "timestamp.json")}
    resp = await upload(env.client)
    assert resp.status_code == 201, resp.text
    release = resp.json()
    assert release["published"] is False

    # Not served to cars: the metadata they fetch is unchanged, the bundle is not downloadable.
    assert {name: await _file(env, name) for name in before} == before
    assert (await env.client.get("/repo/image/targets/" + release["target_path"])).status_code == 404
    recall_id = await _recall(env, release["id"])
    refused = await env.client.post(f"/api/v1/recalls/{recall_id}/launch")
    assert refused.status_code == 409 and "not published" in refused.json()["detail"]

    pending = await env.client.get(PENDING)
    assert pending.status_code == 200
    assert release["target_path"] in Metadata[Targets].from_bytes(pending.content).signed.targets
    assert any("counter 2" in line for line in summary(pending.content))

    signed = await env.client.post(PENDING + "/signatures", json=await _sign(env, tmp_path / "offline"))
    assert signed.status_code == 200, signed.text
    assert signed.json()["release_ids"] == [release["id"]]

    root = Metadata[Root].from_bytes(await _file(env, "root.json"))
    targets = Metadata[Targets].from_bytes(await _file(env, "targets.json"))
    verify(root, "targets", targets)
    snapshot = Metadata[Snapshot].from_bytes(await _file(env, "snapshot.json"))
    verify(root, "snapshot", snapshot)
    timestamp = Metadata[Timestamp].from_bytes(await _file(env, "timestamp.json"))
    verify(root, "timestamp", timestamp)
    assert snapshot.signed.meta["targets.json"].version == targets.signed.version
    assert timestamp.signed.snapshot_meta.version == snapshot.signed.version
    assert release["target_path"] in targets.signed.targets
    assert (await env.client.get("/repo/image/targets/" + release["target_path"])).status_code == 200
    assert (await env.client.get(PENDING)).status_code == 404
    assert (await env.client.get("/api/v1/releases")).json()["items"][0]["published"] is True
    launched = await env.client.post(f"/api/v1/recalls/{recall_id}/launch")
    assert launched.status_code == 201, launched.text


async def _nothing_published(env: Env, before: dict[str, bytes]) -> None:
    assert {name: await _file(env, name) for name in before} == before
    assert (await env.client.get("/api/v1/releases")).json()["items"][0]["published"] is False
    assert (await env.client.get(PENDING)).status_code == 200  # still waiting


async def test_signature_by_a_wrong_key_is_refused_and_nothing_published(offline_env: Env, tmp_path: Path) -> None:
    env = offline_env
    assert (await upload(env.client)).status_code == 201
    before = {name: await _file(env, name) for name in ("targets.json", "snapshot.json", "timestamp.json")}
    key = CryptoSigner.generate_ed25519()  # a targets key the root does not trust
    payload = (await env.client.get(PENDING)).content
    md = Metadata[Targets].from_bytes(payload)
    sig = md.sign(key)
    body = {
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "signatures": [{"keyid": sig.keyid, "sig": sig.signature}],
    }
    resp = await env.client.post(PENDING + "/signatures", json=body)
    assert resp.status_code == 422
    assert f"not trusted for targets by the current root: {sig.keyid}" in resp.json()["detail"]
    assert "nothing was published" in resp.json()["detail"]
    await _nothing_published(env, before)


async def test_signature_over_a_tampered_payload_is_refused(offline_env: Env, tmp_path: Path) -> None:
    env = offline_env
    assert (await upload(env.client)).status_code == 201
    before = {name: await _file(env, name) for name in ("targets.json", "snapshot.json", "timestamp.json")}
    genuine = (await env.client.get(PENDING)).content
    doc = json.loads(genuine)
    path = next(iter(doc["signed"]["targets"]))
    doc["signed"]["targets"][path]["hashes"]["sha256"] = "0" * 64  # someone swaps the bundle's hash
    tampered = json.dumps(doc).encode()

    # Signed over the tampered bytes but claiming the genuine ones: the signature does not verify.
    body = await _sign(env, tmp_path / "offline", tampered)
    body["payload_sha256"] = hashlib.sha256(genuine).hexdigest()
    resp = await env.client.post(PENDING + "/signatures", json=body)
    assert resp.status_code == 422
    assert "do not verify over the pending payload" in resp.json()["detail"]
    # Honest about the bytes signed: they are not what is pending.
    resp = await env.client.post(PENDING + "/signatures", json=await _sign(env, tmp_path / "offline", tampered))
    assert resp.status_code == 409 and "changed since it was fetched" in resp.json()["detail"]
    await _nothing_published(env, before)


async def test_a_second_upload_changes_the_payload_and_a_stale_signature_is_refused(
    offline_env: Env, tmp_path: Path
) -> None:
    env = offline_env
    assert (await upload(env.client)).status_code == 201
    stale = await _sign(env, tmp_path / "offline")
    assert (await upload(env.client, version="1.2.0", counter=3)).status_code == 201
    resp = await env.client.post(PENDING + "/signatures", json=stale)
    assert resp.status_code == 409
    resp = await env.client.post(PENDING + "/signatures", json=await _sign(env, tmp_path / "offline"))
    assert resp.status_code == 200 and len(resp.json()["release_ids"]) == 2
    bundles = {path for path in await _published_paths(env) if path.startswith("bundles/")}
    assert bundles == {f"bundles/{HW}/1.1.0.otab", f"bundles/{HW}/1.2.0.otab"}


async def test_dev_keys_still_publish_at_once(env: Env) -> None:
    resp = await upload(env.client)
    assert resp.status_code == 201 and resp.json()["published"] is True
    assert await _published_paths(env) == {f"bundles/{HW}/1.1.0.otab"}
    assert (await env.client.get(PENDING)).status_code == 404


async def test_recall_minimum_counter_defaults_to_the_release_and_reaches_the_director(env: Env) -> None:
    release = (await upload(env.client, counter=2)).json()
    too_high = await env.client.post("/api/v1/recalls", json={**recall_body(release["id"]), "min_release_counter": 3})
    assert too_high.status_code == 422 and "above the release's own counter" in too_high.json()["detail"]
    recall = await _recall(env, release["id"])
    assert (await env.client.get(f"/api/v1/recalls/{recall}")).json()["min_release_counter"] == 2
    assert (await env.client.post(f"/api/v1/recalls/{recall}/launch")).status_code == 201
    vin = "1HGCM82633A004352"
    director = Metadata[Targets].from_bytes(
        (await env.client.get(f"/repo/director/{vin}/metadata/targets.json")).content
    )
    (target,) = director.signed.targets.values()
    assert target.custom["min_release_counter"] == 2


async def test_director_chain_is_re_signed_lazily_when_its_timestamp_is_served(env: Env) -> None:
    release = (await upload(env.client)).json()
    recall = await _recall(env, release["id"])
    assert (await env.client.post(f"/api/v1/recalls/{recall}/launch")).status_code == 201
    url = "/repo/director/1HGCM82633A004352/metadata/"

    async def version(name: str) -> int:
        signed = Metadata.from_bytes((await env.client.get(url + name)).content).signed
        assert isinstance(signed, Timestamp if name == "timestamp.json" else Snapshot)
        return signed.version

    first = await version("timestamp.json")
    assert await version("timestamp.json") == first  # fresh: served as signed
    env.clock.advance(13 * 3600)  # less than half of its day left
    assert await version("timestamp.json") == first + 1
    assert await version("timestamp.json") == first + 1  # and only once
    assert await version("snapshot.json") == 1
    env.clock.advance(4 * 86400)
    assert await version("timestamp.json") == first + 2
    assert await version("snapshot.json") == 2
