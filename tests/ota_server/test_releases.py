"""Release upload: the bundle must be a bundle, match its form, and fit; nothing is kept otherwise."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from firmware_bundles.bundle import build_bundle, sample_image
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import HW, bundle_bytes, upload, verify


def _stored_files(env: Env) -> list[Path]:
    directory = env.runtime.settings.bundles_dir
    return sorted(directory.iterdir()) if directory.exists() else []


async def _assert_nothing_stored(env: Env) -> None:
    assert (await env.client.get("/api/v1/releases")).json()["items"] == []
    assert _stored_files(env) == []


async def test_upload_signs_the_release_into_the_image_repository(env: Env) -> None:
    data = bundle_bytes()
    resp = await upload(env.client, data)
    assert resp.status_code == 201, resp.text
    release = resp.json()
    assert release["target_path"] == f"bundles/{HW}/1.1.0.otab"
    assert release["sha256"] == hashlib.sha256(data).hexdigest()
    assert release["length"] == len(data)

    root = Metadata[Root].from_bytes((await env.client.get("/repo/image/metadata/root.json")).content)
    targets = Metadata[Targets].from_bytes((await env.client.get("/repo/image/metadata/targets.json")).content)
    snapshot = Metadata[Snapshot].from_bytes((await env.client.get("/repo/image/metadata/snapshot.json")).content)
    timestamp = Metadata[Timestamp].from_bytes((await env.client.get("/repo/image/metadata/timestamp.json")).content)
    verify(root, "targets", targets)
    verify(root, "snapshot", snapshot)
    verify(root, "timestamp", timestamp)
    target = targets.signed.targets[release["target_path"]]
    assert target.hashes["sha256"] == release["sha256"]
    image = sample_image(HW, "1.1.0", size=4096)  # what bundle_bytes() packs
    assert target.custom == {
        "hardware_id": HW,
        "version": "1.1.0",
        "release_counter": 2,
        "image_sha256": hashlib.sha256(image).hexdigest(),
        "image_size": len(image),
    }
    assert snapshot.signed.meta["targets.json"].version == targets.signed.version
    assert timestamp.signed.snapshot_meta.version == snapshot.signed.version

    served = await env.client.get(f"/repo/image/targets/{release['target_path']}")
    assert served.status_code == 200
    assert served.content == data


async def test_every_upload_lists_all_releases_with_growing_versions(env: Env) -> None:
    await upload(env.client, version="1.1.0")
    first = Metadata[Targets].from_bytes((await env.client.get("/repo/image/metadata/targets.json")).content)
    await upload(env.client, version="1.2.0", counter=3)
    second = Metadata[Targets].from_bytes((await env.client.get("/repo/image/metadata/targets.json")).content)
    assert second.signed.version == first.signed.version + 1
    bundles = {path for path in second.signed.targets if path.startswith("bundles/")}  # deltas aside
    assert bundles == {f"bundles/{HW}/1.1.0.otab", f"bundles/{HW}/1.2.0.otab"}
    listed = (await env.client.get("/api/v1/releases")).json()["items"]
    assert [r["version"] for r in listed] == ["1.1.0", "1.2.0"]


async def test_not_a_bundle_is_422_and_nothing_is_stored(env: Env) -> None:
    resp = await upload(env.client, b"this is not a tar file" * 100)
    assert resp.status_code == 422
    assert "not a valid bundle" in resp.json()["detail"]
    await _assert_nothing_stored(env)


async def test_manifest_mismatch_is_422_and_nothing_is_stored(env: Env) -> None:
    other = build_bundle(sample_image(HW, "9.9.9", size=2048), HW, "9.9.9", 2).data
    resp = await upload(env.client, other, version="1.1.0")
    assert resp.status_code == 422
    assert "version" in resp.json()["detail"]
    resp = await upload(env.client, bundle_bytes(counter=5), counter=2)
    assert "release_counter" in resp.json()["detail"]
    resp = await upload(env.client, bundle_bytes(hardware_id="ecu-other"), hardware_id=HW)
    assert "hardware_id" in resp.json()["detail"]
    await _assert_nothing_stored(env)


async def test_tampered_image_is_422(env: Env) -> None:
    data = bytearray(bundle_bytes())
    data[2048] ^= 0xFF  # inside image.bin: the manifest's hash no longer matches
    resp = await upload(env.client, bytes(data))
    assert resp.status_code == 422
    assert "sha256" in resp.json()["detail"]
    await _assert_nothing_stored(env)


async def test_duplicate_release_is_409(env: Env) -> None:
    assert (await upload(env.client)).status_code == 201
    resp = await upload(env.client)
    assert resp.status_code == 409
    assert "already exists" in resp.json()["detail"]


async def test_upload_over_the_cap_is_413(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, max_upload_bytes=4096)) as env:
        resp = await upload(env.client, bundle_bytes())
        assert resp.status_code == 413
        assert "upload limit" in resp.json()["detail"]
        await _assert_nothing_stored(env)


async def test_unknown_repository_files_are_404(env: Env) -> None:
    for path in (
        "/repo/image/metadata/nope.json",
        "/repo/image/metadata/2.root.json",
        "/repo/image/targets/bundles/x/1.otab",
    ):
        resp = await env.client.get(path)
        assert resp.status_code == 404, path
