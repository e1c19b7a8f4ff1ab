"""Attacks on what is installed: swapped target bytes, mix-and-match of releases, and the Director
and the Image repository disagreeing on hardware."""

from __future__ import annotations

import pytest

from firmware_bundles import repo_paths
from firmware_bundles.uptane import image_target
from tests.vehicle_agent.conftest import Car
from tests.vehicle_agent.fakes import HW, REPO, SERIAL, FakeServer

from .harness import R, genuine_update_succeeds, refused


async def test_swapped_target_bytes_are_refused(car: Car, server: FakeServer) -> None:
    """The mirror serves another genuine, signed bundle (same length) at 2.0's path."""
    wanted = server.release("2.0", 2)
    other = server.release("2.1", 2)
    assert wanted.length == other.length
    url = repo_paths.targets_url(REPO) + wanted.path
    genuine = server.transport.files[url]
    server.transport.files[url] = server.bundles[other.path].data
    server.assign({SERIAL: wanted})

    await refused(car, server, R.HASH_MISMATCH)
    car.assert_untouched()
    server.transport.files[url] = genuine
    await genuine_update_succeeds(car, server)


@pytest.mark.parametrize("trick", ["old image under the new path", "old image relabelled as new"])
async def test_mix_and_match_of_releases_is_refused(car: Car, server: FakeServer, trick: str) -> None:
    """The Director key alone pairs a path, hash, version and counter that were never released
    together: 2.0's bundle listed at 3.0's path, or 2.0's path and hash claiming to be 3.0."""
    old = server.release("2.0", 2)
    new = server.release("3.0", 3)
    if trick == "old image under the new path":
        forged = image_target(new.path, old.length, old.hashes["sha256"], HW, "3.0", 3)
        server.transport.files[repo_paths.targets_url(REPO) + new.path] = server.bundles[old.path].data
    else:
        forged = image_target(old.path, old.length, old.hashes["sha256"], HW, "3.0", 3)
    server.assign({SERIAL: forged})

    report = await refused(car, server, R.TARGET_MISMATCH)
    assert "disagree" in report.detail
    car.assert_untouched()
    server.transport.files[repo_paths.targets_url(REPO) + new.path] = server.bundles[new.path].data
    await genuine_update_succeeds(car, server, "4.0")


@pytest.mark.parametrize("who", ["director claims this hardware", "director assigns other hardware"])
async def test_hardware_id_disagreement_is_refused(car: Car, server: FakeServer, who: str) -> None:
    """An image released for other hardware: the Director either relabels it with this ECU's
    hardware id (the Image repository disagrees) or assigns it as it is (the ECU disagrees)."""
    other = server.release("2.0", 2, hardware_id="other-hw")
    if who == "director claims this hardware":
        server.assign({SERIAL: image_target(other.path, other.length, other.hashes["sha256"], HW, "2.0", 2)})
    else:
        server.assign({SERIAL: other})

    report = await refused(car, server, R.HARDWARE_MISMATCH)
    assert "other-hw" in report.detail or "hardware_id" in report.detail
    car.assert_untouched()
    await genuine_update_succeeds(car, server)
