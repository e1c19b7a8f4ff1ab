"""Shared pieces of the attack suite: the verdict every agent-side attack must reach, and the
repository-forging tools an attacker would use (roots with thresholds, hand-signed snapshot and
timestamp metadata, a bundle whose connection drops).

The car and the two repositories are the agent tests' fakes (``tests/vehicle_agent``): the real
:class:`vehicle_agent.agent.Agent`, python-tuf verification and file-backed A/B slots, over an
in-memory transport. Only the attacker's side lives here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Role, Root, Snapshot, TargetFile, Timestamp
from tuf.api.serialization.json import JSONSerializer

from firmware_bundles import repo_paths
from firmware_bundles.messages import FailureReason, ReportState, StatusReport
from firmware_bundles.uptane import TOP_LEVEL_ROLES, RoleSigners
from tests.vehicle_agent.conftest import Car
from tests.vehicle_agent.fakes import OLD, REPO, SERIAL, VIN, FakeServer
from vehicle_agent.errors import FetchError
from vehicle_agent.transport import Chunks, MemoryTransport

S = ReportState
R = FailureReason
_COMPACT = JSONSerializer(compact=True)


# -- the verdict ---------------------------------------------------------------------------


async def refused(
    car: Car, server: FakeServer, reason: FailureReason, campaign_id: int = 1, *, installed: str = OLD
) -> StatusReport:
    """Run a campaign under attack: it must end ``failed`` with exactly ``reason``, reporting the
    software the car still runs, and never reach the step that writes a slot."""
    state = await car.agent.handle(server.notice(campaign_id))
    last = car.link.reports[-1]
    assert state is S.FAILED, f"the attack was not refused: the campaign ended {state}"
    assert (last.state, last.reason) == (S.FAILED, reason), last.detail
    assert last.campaign_id == campaign_id
    assert last.installed_version == installed
    steps = [r.state for r in car.link.reports if r.campaign_id == campaign_id]
    assert S.INSTALLING not in steps, "the attack got as far as writing a slot"
    return last


async def genuine_update_succeeds(car: Car, server: FakeServer, version: str = "3.0", campaign_id: int = 99) -> None:
    """The next genuine release, assigned and announced, is installed, booted and committed."""
    server.assign({SERIAL: server.release(version, int(version.split(".")[0]))})
    assert await car.agent.handle(server.notice(campaign_id)) is S.REMEDIED, car.link.reports[-1].detail
    assert car.running_version() == version
    assert car.slots.booted_slot() == car.slots.active_slot()
    assert car.slots.pending_try() is None


def new_car(server: FakeServer, state_dir: Path) -> Car:
    """A car provisioned with whatever roots ``server`` holds now (for tests that replace a root first)."""
    return Car(server, state_dir)


# -- forging metadata ------------------------------------------------------------------------


def signed(md: Metadata[Any], signers: Sequence[Signer]) -> bytes:
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes(_COMPACT)


@dataclass
class KeyRing:
    """Keys per top-level role and the threshold of each, from which roots are made."""

    keys: dict[str, list[CryptoSigner]]
    thresholds: dict[str, int]

    @classmethod
    def generate(cls, counts: Mapping[str, int] | None = None, thresholds: Mapping[str, int] | None = None) -> KeyRing:
        counts = {role: 1 for role in TOP_LEVEL_ROLES} | dict(counts or {})
        thresholds = {role: 1 for role in TOP_LEVEL_ROLES} | dict(thresholds or {})
        return cls(
            {role: [CryptoSigner.generate_ed25519() for _ in range(counts[role])] for role in counts}, thresholds
        )

    def replace(self, role: str, keys: list[CryptoSigner], threshold: int | None = None) -> KeyRing:
        return KeyRing(
            {**self.keys, role: keys}, {**self.thresholds, role: threshold or self.thresholds[role]}
        )  # fmt: skip

    def role_signers(self, **only: Sequence[CryptoSigner]) -> RoleSigners:
        """Signers for publishing (every key of each role unless ``only`` narrows one)."""
        pick = {role: list(only.get(role, self.keys[role])) for role in TOP_LEVEL_ROLES}
        return RoleSigners(pick["root"], pick["targets"], pick["snapshot"], pick["timestamp"])

    def root(self, version: int, expires: datetime, signers: Sequence[Signer]) -> bytes:
        """Root ``version`` trusting these keys and thresholds, signed by ``signers``."""
        root = Root(version=version, expires=expires, consistent_snapshot=False)
        for role in TOP_LEVEL_ROLES:
            root.roles[role] = Role([], threshold=self.thresholds[role])
            for key in self.keys[role]:
                root.add_key(key.public_key, role)
        return signed(Metadata(root), signers)


def timestamp(version: int, snapshot_version: int, signers: Sequence[Signer], expires: datetime) -> bytes:
    return signed(
        Metadata(Timestamp(version=version, expires=expires, snapshot_meta=MetaFile(snapshot_version))), signers
    )


def snapshot(version: int, targets_version: int, signers: Sequence[Signer], expires: datetime) -> bytes:
    meta = {"targets.json": MetaFile(targets_version)}
    return signed(Metadata(Snapshot(version=version, expires=expires, meta=meta)), signers)


# -- the two repositories as one interface -----------------------------------------------------


@dataclass(frozen=True)
class Repository:
    """The Image repository or this car's Director: where it is served, how it re-signs."""

    name: str

    def metadata_url(self, vin: str = VIN) -> str:
        if self.name == "image":
            return repo_paths.image_metadata_url(REPO)
        return repo_paths.director_metadata_url(REPO, vin)

    def trust(self, server: FakeServer, ring: KeyRing, root: bytes) -> None:
        """Make ``root`` (built from ``ring``) this repository's version 1, the root cars ship with."""
        if self.name == "image":
            server.image_root, server.image_signers = root, ring.role_signers()
            server.transport.files[self.metadata_url() + "1.root.json"] = root
            server.publish_image()
        else:
            server.director_root, server.director_signers = root, ring.role_signers()
            for vin in server.director_versions.keys() | {VIN}:
                server.transport.files[self.metadata_url(vin) + "1.root.json"] = root

    def publish(self, server: FakeServer, target: TargetFile, signers: RoleSigners | None = None) -> dict[str, bytes]:
        """Re-sign targets, snapshot and timestamp (this car's Director assigning ``target``)."""
        if self.name == "image":
            return server.publish_image(signers=signers)
        return server.assign({SERIAL: target}, signers=signers)

    def use(self, server: FakeServer, signers: RoleSigners) -> None:
        """From now on the repository publishes with ``signers`` (after a rotation)."""
        if self.name == "image":
            server.image_signers = signers
        else:
            server.director_signers = signers

    def signers(self, server: FakeServer) -> RoleSigners:
        return server.image_signers if self.name == "image" else server.director_signers

    def serve(self, server: FakeServer, files: Mapping[str, bytes]) -> None:
        for name, data in files.items():
            server.transport.files[self.metadata_url() + name] = data


IMAGE = Repository("image")
DIRECTOR = Repository("director")
BOTH = (IMAGE, DIRECTOR)


def in_days(server: FakeServer, days: float) -> datetime:
    return server.now + timedelta(days=days)


# -- a connection that drops mid-bundle -----------------------------------------------------


class DroppingTransport(MemoryTransport):
    """Serves like :class:`MemoryTransport`, but while ``drop_at`` is set a request for ``url``
    breaks once the body reaches that byte: every retry gets no further."""

    def __init__(self, files: dict[str, Any]) -> None:
        super().__init__(files)
        self.url: str | None = None
        self.drop_at: int | None = None

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        with super().stream(url, start=start) as chunks:
            if url != self.url or self.drop_at is None:
                yield chunks
                return
            yield Chunks(self._until(url, chunks, self.drop_at), chunks.start)

    @staticmethod
    def _until(url: str, chunks: Chunks, drop_at: int) -> Iterator[bytes]:
        offset = chunks.start
        for chunk in chunks:
            keep = chunk[: max(0, drop_at - offset)]
            if keep:
                yield keep
            offset += len(keep)
            if offset >= drop_at:
                break
        raise FetchError(url, "connection reset by peer")
