"""Delta updates on the agent: used only when signed and matching the running slot, else the full bundle."""

from __future__ import annotations

import hashlib
import io

import bsdiff4
import pytest
from tuf.api.metadata import TargetFile

from firmware_bundles import repo_paths
from firmware_bundles.bundle import build_bundle, revised_image, sample_image
from firmware_bundles.messages import ReportState, StatusReport
from firmware_bundles.uptane import bundle_target_path, delta_target, delta_target_path, image_target
from vehicle_agent import delta

from .conftest import Car
from .fakes import HW, OLD, REPO, SERIAL, FakeServer

S = ReportState
NEW = "2.0"
BASE = sample_image(HW, OLD)  # what the car's slot a holds


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def url(path: str) -> str:
    return repo_paths.targets_url(REPO) + path


class Release:
    """A release of NEW built as a small patch of ``base``, with a delta from ``base``."""

    def __init__(self, server: FakeServer, base: bytes = BASE, *, listed: bool = True) -> None:
        self.image = revised_image(base, HW, NEW)
        self.bundle = build_bundle(self.image, HW, NEW, 2)
        self.path = bundle_target_path(HW, NEW)
        self.delta = bsdiff4.diff(base, self.image)
        self.delta_path = delta_target_path(HW, sha(base), NEW)
        server.bundles[self.path] = self.bundle
        server.transport.files[url(self.path)] = self.bundle.data
        server.transport.files[url(self.delta_path)] = self.delta
        self.target = image_target(
            self.path, self.bundle.length, self.bundle.sha256, HW, NEW, 2, image_sha256=sha(self.image),
            image_size=len(self.image),
        )  # fmt: skip
        server.image_targets[self.path] = self.target
        if listed:
            server.image_targets[self.delta_path] = self.delta_target(self.delta, base)
        server.publish_image()
        server.assign({SERIAL: self.target})

    def delta_target(self, delta: bytes, base: bytes) -> TargetFile:
        return delta_target(
            self.delta_path,
            len(delta),
            sha(delta),
            delta_for=self.path,
            base_image_sha256=sha(base),
            image_sha256=sha(self.image),
            image_size=len(self.image),
        )


async def remedied(car: Car, server: FakeServer, release: Release) -> None:
    assert await car.agent.handle(server.notice()) is S.REMEDIED
    assert car.running_version() == NEW
    assert car.slots.slot_sha256(car.slots.booted_slot()) == sha(release.image)
    downloads = car.state_dir / "downloads"
    assert not any(downloads.iterdir()), "the rebuilt image, delta and bundle are all cleaned up"


async def test_the_delta_is_used_when_the_running_slot_is_its_base(car: Car, server: FakeServer) -> None:
    release = Release(server)
    await remedied(car, server, release)

    sent = server.transport.sent
    assert url(release.path) not in sent, "the full bundle was never downloaded"
    assert sent[url(release.delta_path)] == len(release.delta)
    assert len(release.delta) < release.bundle.length / 5


async def test_a_delta_for_another_base_is_not_even_asked_for(car: Car, server: FakeServer) -> None:
    release = Release(server, base=sample_image(HW, "0.9"))
    await remedied(car, server, release)

    assert url(release.delta_path) not in server.transport.requests
    assert server.transport.sent[url(release.path)] == release.bundle.length


@pytest.mark.parametrize("damage", ["bytes_swapped_in_transit", "signed_but_builds_another_image"])
async def test_a_bad_delta_falls_back_to_the_full_bundle(car: Car, server: FakeServer, damage: str) -> None:
    release = Release(server)
    if damage == "bytes_swapped_in_transit":
        server.transport.files[url(release.delta_path)] = bsdiff4.diff(BASE, sample_image(HW, "evil"))
    else:  # the repository signed a delta that does not produce the signed image
        wrong = bsdiff4.diff(BASE, revised_image(BASE, HW, NEW, changed_bytes=100))
        server.transport.files[url(release.delta_path)] = wrong
        server.image_targets[release.delta_path] = release.delta_target(wrong, BASE)
        server.publish_image()
    await remedied(car, server, release)

    assert url(release.delta_path) in server.transport.requests
    assert server.transport.sent[url(release.path)] == release.bundle.length


async def test_a_delta_missing_from_the_signed_metadata_is_never_used(car: Car, server: FakeServer) -> None:
    release = Release(server, listed=False)  # served, at the very path the car would compute
    await remedied(car, server, release)

    assert url(release.delta_path) not in server.transport.requests
    assert server.transport.sent[url(release.path)] == release.bundle.length


async def test_a_restart_after_the_rebuild_installs_the_rebuilt_image(car: Car, server: FakeServer) -> None:
    release = Release(server)

    class PowerCut(BaseException):
        pass

    def cut_at_verifying(report: StatusReport) -> None:
        if report.state is S.VERIFYING:
            raise PowerCut

    car.build(on_report=cut_at_verifying)
    with pytest.raises(PowerCut):
        await car.agent.handle(server.notice())
    assert (car.state_dir / "downloads" / f"{release.bundle.sha256}.img").exists()

    car.build()
    assert await car.agent.resume() == [S.REMEDIED]
    assert car.running_version() == NEW
    assert url(release.path) not in server.transport.sent


@pytest.mark.parametrize(
    ("size", "limit", "whole"),
    [
        (0, 10, True),
        (10, 10, True),
        (11, 10, False),
        (3 * (1 << 20) + 5, 3 * (1 << 20) + 5, True),
        (3 << 20, 2 << 20, False),
    ],
)
def test_the_running_image_is_read_whole_up_to_the_limit_and_not_past_it(size: int, limit: int, whole: bool) -> None:
    """A delta's base: all of it when it fits the limit (across several reads), else None (a full bundle)."""
    data = bytes(i % 251 for i in range(size))
    found = delta.read_at_most(io.BufferedReader(io.BytesIO(data)), limit)
    assert found == (data if whole else None)
