"""Deltas built at release upload and served as signed targets; bundle files honour HTTP Range."""

from __future__ import annotations

import hashlib
import io

import bsdiff4
from tuf.api.metadata import Metadata, Targets

from firmware_bundles.bundle import build_bundle, revised_image, sample_image
from firmware_bundles.uptane import bundle_target_path, delta_target_path
from ota_server.schemas import ReleasePublic
from ota_server.services import releases
from ota_server.services.deltas import DeltaPolicy
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import HW

BASE = sample_image(HW, "1.0.0")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(env: Env, image: bytes, version: str, counter: int, policy: DeltaPolicy | None = None) -> ReleasePublic:
    """Straight through the service (the HTTP upload and its auth are tested in test_releases)."""
    runtime = env.runtime
    data = build_bundle(image, HW, version, counter).data
    with runtime.sessions() as session:
        return releases.upload(
            session,
            runtime.bundles,
            runtime.image_repo,
            io.BytesIO(data),
            hardware_id=HW,
            version=version,
            release_counter=counter,
            now=runtime.clock(),
            delta_policy=policy,
        )


async def signed_targets(env: Env) -> Targets:
    raw = (await env.client.get("/repo/image/metadata/targets.json")).content
    return Metadata[Targets].from_bytes(raw).signed


async def test_a_release_gets_a_signed_delta_from_the_older_release(env: Env) -> None:
    upload(env, BASE, "1.0.0", 1)
    new = revised_image(BASE, HW, "2.0.0")
    release = upload(env, new, "2.0.0", 2)

    targets = (await signed_targets(env)).targets
    full = targets[bundle_target_path(HW, "2.0.0")]
    assert full.custom["image_sha256"] == sha(new)
    assert full.custom["image_size"] == len(new)
    path = delta_target_path(HW, sha(BASE), "2.0.0")
    delta = targets[path]
    assert delta.custom == {
        "delta_for": release.target_path,
        "base_image_sha256": sha(BASE),
        "image_sha256": sha(new),
        "image_size": len(new),
    }
    assert delta.length < release.length / 5

    served = await env.client.get(f"/repo/image/targets/{path}")
    assert served.status_code == 200
    assert sha(served.content) == delta.hashes["sha256"]
    assert bsdiff4.patch(BASE, served.content) == new


async def test_a_delta_that_saves_too_little_is_not_kept(env: Env) -> None:
    upload(env, BASE, "1.0.0", 1)
    upload(env, sample_image(HW, "2.0.0"), "2.0.0", 2)  # unrelated bytes: the delta is as big as the bundle
    upload(env, revised_image(BASE, HW, "3.0.0"), "3.0.0", 3, DeltaPolicy(max_ratio=0.01))

    paths = set((await signed_targets(env)).targets)
    assert not [p for p in paths if p.startswith("deltas/")]
    assert list(env.runtime.settings.bundles_dir.glob("*.bsdiff")) == []


async def test_deltas_come_only_from_older_releases_and_each_base_once(env: Env) -> None:
    upload(env, BASE, "1.0.0", 1)
    v2 = revised_image(BASE, HW, "2.0.0")
    upload(env, v2, "2.0.0", 2)
    upload(env, revised_image(v2, HW, "3.0.0"), "3.0.0", 3)
    upload(env, revised_image(BASE, HW, "0.9.0"), "0.9.0", 0)  # older counter: never a delta target

    deltas = sorted(p for p in (await signed_targets(env)).targets if p.startswith("deltas/"))
    assert deltas == sorted(
        [
            delta_target_path(HW, sha(BASE), "2.0.0"),
            delta_target_path(HW, sha(BASE), "3.0.0"),
            delta_target_path(HW, sha(v2), "3.0.0"),
        ]
    )


async def test_bundle_files_honour_range_requests(env: Env) -> None:
    release = upload(env, BASE, "1.0.0", 1)
    url = f"/repo/image/targets/{release.target_path}"
    whole = (await env.client.get(url)).content

    part = await env.client.get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-{len(whole) - 1}/{len(whole)}"
    assert part.content == whole[1000:]
    assert (await env.client.get(url, headers={"Range": f"bytes={len(whole)}-"})).status_code == 416
