"""Keys and thresholds: metadata signed below threshold, the root rotation chain (followed, and a
forged link refused) and what an attacker holding online keys alone can do."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from firmware_bundles import repo_paths
from firmware_bundles.bundle import build_bundle, sample_image
from firmware_bundles.uptane import Expiry, RepoVersions, RoleSigners, image_target, publish_targets
from tests.vehicle_agent.fakes import HW, REPO, SERIAL, FakeServer

from .harness import BOTH, KeyRing, R, Repository, genuine_update_succeeds, in_days, new_car, refused


@pytest.mark.parametrize("repository", BOTH, ids=lambda r: r.name)
async def test_targets_signed_below_threshold_are_refused(
    server: FakeServer, tmp_path: Path, repository: Repository
) -> None:
    """Targets needs 2 of its 2 keys; the attacker (or a careless release) signs with one."""
    ring = KeyRing.generate(counts={"targets": 2}, thresholds={"targets": 2})
    repository.trust(server, ring, ring.root(1, in_days(server, 365), ring.keys["root"]))
    car = new_car(server, tmp_path / "car")
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    repository.publish(server, target, ring.role_signers(targets=ring.keys["targets"][:1]))

    report = await refused(car, server, R.METADATA_SIGNATURE_INVALID)
    assert "targets" in report.detail
    car.assert_untouched()
    await genuine_update_succeeds(car, server)


@pytest.mark.parametrize("repository", BOTH, ids=lambda r: r.name)
async def test_new_root_signed_below_the_old_root_threshold_is_refused(
    server: FakeServer, tmp_path: Path, repository: Repository
) -> None:
    """Root threshold 2 of 3: a root v2 (handing targets to the attacker's key) signed by one
    stolen root key is not followed."""
    ring = KeyRing.generate(counts={"root": 3}, thresholds={"root": 2})
    repository.trust(server, ring, ring.root(1, in_days(server, 365), ring.keys["root"]))
    car = new_car(server, tmp_path / "car")
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    hijacked = ring.replace("targets", KeyRing.generate().keys["targets"])
    one_key = ring.keys["root"][:1]
    repository.serve(server, {"2.root.json": hijacked.root(2, in_days(server, 365), one_key)})
    repository.publish(server, target, hijacked.role_signers())

    report = await refused(car, server, R.METADATA_SIGNATURE_INVALID)
    assert "root" in report.detail
    car.assert_untouched()
    assert not _trusted_roots(car.state_dir, repository) - {1}, "the forged root was not kept"

    # the owners publish a genuine v2 (two root keys), rotating the targets key the proper way
    rotated = ring.replace("targets", [*KeyRing.generate().keys["targets"]])
    repository.serve(server, {"2.root.json": rotated.root(2, in_days(server, 365), ring.keys["root"][1:])})
    repository.use(server, rotated.role_signers())
    await genuine_update_succeeds(car, server)


@pytest.mark.parametrize("repository", BOTH, ids=lambda r: r.name)
async def test_root_rotation_chain_is_followed_and_a_forged_link_refused(
    server: FakeServer, tmp_path: Path, repository: Repository
) -> None:
    """The car ships root v1. A forged v2 (the attacker's own keys) is refused; the genuine chain
    v1 -> v2 -> v3, each signed by the previous threshold and its own, is followed, and targets
    signed only by v3's new targets key are then trusted."""
    expires = in_days(server, 365)
    v1 = KeyRing.generate(counts={"root": 3}, thresholds={"root": 2})
    repository.trust(server, v1, v1.root(1, expires, v1.keys["root"]))
    car = new_car(server, tmp_path / "car")
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})

    forged = KeyRing.generate(counts={"root": 3}, thresholds={"root": 2})
    repository.serve(server, {"2.root.json": forged.root(2, expires, forged.keys["root"])})
    repository.publish(server, target, forged.role_signers())
    await refused(car, server, R.METADATA_SIGNATURE_INVALID)
    car.assert_untouched()

    fresh = KeyRing.generate(counts={"root": 3})
    v2 = v1.replace("root", [*v1.keys["root"][1:], fresh.keys["root"][0]]).replace("targets", fresh.keys["targets"])
    v3 = v2.replace("root", [*fresh.keys["root"][1:], v2.keys["root"][0]]).replace(
        "targets", KeyRing.generate().keys["targets"]
    )
    repository.serve(
        server,
        {
            "2.root.json": v2.root(2, expires, [*v1.keys["root"][:2], *v2.keys["root"][-2:]]),
            "3.root.json": v3.root(3, expires, [*v2.keys["root"][:2], *v3.keys["root"][:2]]),
        },
    )
    repository.use(server, v3.role_signers())  # v1's and v2's targets keys can no longer sign
    await genuine_update_succeeds(car, server)
    assert _trusted_roots(car.state_dir, repository) == {1, 2, 3}


async def test_image_repository_online_keys_alone_cannot_add_or_change_a_target(
    server: FakeServer, tmp_path: Path
) -> None:
    """With the Image repository's timestamp and snapshot keys (online) but not its targets key,
    the attacker re-lists 2.0 with a backdoored bundle: the targets signature gives it away."""
    car = new_car(server, tmp_path / "car")
    genuine = server.release("2.0", 2)
    server.assign({SERIAL: genuine})
    _serve_rogue_image_repo(server, server.image_signers, version="2.0")
    server.assign({SERIAL: genuine})

    report = await refused(car, server, R.METADATA_SIGNATURE_INVALID)
    assert "image repository" in report.detail
    car.assert_untouched()
    _recover(server)
    await genuine_update_succeeds(car, server)


async def test_all_online_keys_together_cannot_install_arbitrary_software(server: FakeServer, tmp_path: Path) -> None:
    """Worse than one repository's online key: the Director key AND the Image repository's
    timestamp and snapshot keys. The Director assigns a rogue bundle, the attacker lists it in
    the Image repository as best it can; without the offline targets key nothing installs."""
    car = new_car(server, tmp_path / "car")
    server.release("2.0", 2)
    rogue = _serve_rogue_image_repo(server, server.image_signers, version="6.6.6")
    server.assign({SERIAL: rogue})  # signed with the genuine (stolen) Director key

    await refused(car, server, R.METADATA_SIGNATURE_INVALID)
    car.assert_untouched()
    _recover(server)
    await genuine_update_succeeds(car, server)


def _serve_rogue_image_repo(server: FakeServer, stolen: RoleSigners, *, version: str) -> TargetFile:
    """List a rogue bundle at ``version``'s path, signing targets with the best key the attacker
    has (the stolen snapshot key) and snapshot/timestamp with the stolen online keys."""
    rogue = build_bundle(sample_image(HW, version) + b"backdoor", HW, version, 66)
    path = f"bundles/{HW}/{version}.otab"
    server.transport.files[repo_paths.targets_url(REPO) + path] = rogue.data
    target = image_target(path, rogue.length, rogue.sha256, HW, version, 66)
    signers = RoleSigners(stolen.root[:0], stolen.snapshot, stolen.snapshot, stolen.timestamp)
    _, files = publish_targets(
        {**server.image_targets, path: target}, signers, Expiry(), server.now, server.image_versions
    )
    for name, data in files.items():
        server.transport.files[repo_paths.image_metadata_url(REPO) + name] = data
    return target


def _recover(server: FakeServer) -> None:
    """The repository, knowing its online keys leaked, re-signs above any version the attacker used."""
    v = server.image_versions
    server.image_versions = RepoVersions(v.targets + 1, v.snapshot + 1, v.timestamp + 1)


def _trusted_roots(state_dir: Path, repository: Repository) -> set[int]:
    history = state_dir / "metadata" / repository.name / "root_history"
    return {int(p.name.split(".")[0]) for p in history.glob("*.root.json")}
