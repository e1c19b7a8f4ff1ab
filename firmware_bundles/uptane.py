"""Uptane-style metadata on python-tuf: building, signing and cross-checking.

Two repositories, both plain TUF repositories built with ``tuf.api.metadata``:

* the Image repository lists every released bundle (length, sha256 and, in
  ``custom``, hardware id, version and release counter);
* the Director publishes, per vehicle, targets metadata naming exactly the image
  each ECU of that VIN must install (``custom`` carries ``vin`` and ``ecu_serial``).

The server signs with these helpers; the agent verifies with ``tuf.ngclient`` and
then calls :func:`assignments_for` and :func:`check_image_agrees`, which raise
:class:`TargetMismatch` with a precise :class:`FailureReason`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from firmware_bundles.assignment import Assignment as Assignment  # re-exported: the agent-side checks return it
from firmware_bundles.canonical import CompactSerializer, sign_and_serialize
from firmware_bundles.errors import TargetMismatch
from firmware_bundles.messages import FailureReason

TOP_LEVEL_ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
# python-tuf's compact JSON, the same bytes on orjson (firmware_bundles.canonical).
_SERIALIZER = CompactSerializer()
# Metadata is re-signed once less than this share of its lifetime is left.
RESIGN_MARGIN = 0.5


@dataclass(frozen=True)
class RoleSigners:
    """The signers of each top-level role (several keys per role where a threshold asks)."""

    root: Sequence[Signer]
    targets: Sequence[Signer]
    snapshot: Sequence[Signer]
    timestamp: Sequence[Signer]

    def for_role(self, role: str) -> Sequence[Signer]:
        signers: Sequence[Signer] = getattr(self, role)
        return signers

    @classmethod
    def generate(cls, *, single_online_key: bool = False) -> RoleSigners:
        """Fresh ed25519 keys; ``single_online_key`` gives the Director's layout (one online key)."""
        root = CryptoSigner.generate_ed25519()
        if single_online_key:
            online = CryptoSigner.generate_ed25519()
            return cls([root], [online], [online], [online])
        return cls(
            [root],
            [CryptoSigner.generate_ed25519()],
            [CryptoSigner.generate_ed25519()],
            [CryptoSigner.generate_ed25519()],
        )


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata is valid once signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class RepoVersions:
    """Current versions of the roles a repository re-signs on every change."""

    targets: int = 0
    snapshot: int = 0
    timestamp: int = 0


def sign_metadata(md: Metadata[Any], signers: Sequence[Signer]) -> bytes:
    """Add a signature by each of ``signers`` (over tuf's canonical JSON) and serialize."""
    return sign_and_serialize(md, signers)


_sign = sign_metadata


def serialize(md: Metadata[Any]) -> bytes:
    """The bytes the repositories store and serve (signed or, for a pending payload, not)."""
    return md.to_bytes(_SERIALIZER)


def create_root(
    signers: RoleSigners,
    expires: datetime,
    *,
    version: int = 1,
    thresholds: Mapping[str, int] | None = None,
    consistent_snapshot: bool = False,
) -> bytes:
    """Signed root metadata trusting the public keys of ``signers``.

    Each role's threshold is 1 unless ``thresholds`` names it; every root signer signs.
    ``consistent_snapshot`` makes TUF clients fetch ``N.snapshot.json``/``M.targets.json``
    by version (the Director's roots; the Image repository serves bundles by plain path).
    Raises ValueError when a threshold asks for more keys than the role has.
    """
    root = Root(version=version, expires=expires, consistent_snapshot=consistent_snapshot)
    for role in TOP_LEVEL_ROLES:
        keys = signers.for_role(role)
        threshold = (thresholds or {}).get(role, 1)
        if not 1 <= threshold <= max(1, len({s.public_key.keyid for s in keys})):
            raise ValueError(f"{role} threshold {threshold} does not fit its {len(keys)} key(s)")
        root.roles[role] = Role([], threshold=threshold)
        for signer in keys:
            root.add_key(signer.public_key, role)
    return _sign(Metadata(root), signers.root)


def unsigned_targets(
    targets: Mapping[str, TargetFile],
    version: int,
    expires: datetime,
    *,
    extra: Mapping[str, object] | None = None,
) -> Metadata[Targets]:
    """Targets metadata with no signature yet (what an offline targets key is asked to sign)."""
    return Metadata(
        Targets(version=version, expires=expires, targets=dict(targets), unrecognized_fields=dict(extra or {}))
    )


def sign_snapshot_and_timestamp(
    targets_version: int, signers: RoleSigners, expiry: Expiry, now: datetime, previous: RepoVersions
) -> tuple[RepoVersions, dict[str, bytes]]:
    """A new snapshot naming ``targets_version`` and a new timestamp naming that snapshot."""
    versions = RepoVersions(targets_version, previous.snapshot + 1, previous.timestamp + 1)
    smd = Metadata(
        Snapshot(
            version=versions.snapshot, expires=now + expiry.snapshot, meta={"targets.json": MetaFile(targets_version)}
        )
    )
    tsmd = Metadata(
        Timestamp(version=versions.timestamp, expires=now + expiry.timestamp, snapshot_meta=MetaFile(versions.snapshot))
    )
    files = {"snapshot.json": _sign(smd, signers.snapshot), "timestamp.json": _sign(tsmd, signers.timestamp)}
    return versions, files


def due(expires: datetime, lifetime: timedelta, now: datetime, margin: float = RESIGN_MARGIN) -> bool:
    """True once less than ``margin`` of ``lifetime`` is left before ``expires``."""
    return expires - now < lifetime * margin


def refresh_chain(
    files: Mapping[str, bytes],
    signers: RoleSigners,
    expiry: Expiry,
    now: datetime,
    *,
    force: Collection[str] = (),
) -> dict[str, tuple[int, bytes]]:
    """Re-sign the roles of a targets/snapshot/timestamp chain that are due (or in ``force``).

    A re-signed role gets the next version and a fresh expiry, and the roles above it
    follow. Targets is never re-signed without targets signers (an offline key).
    Returns ``{file name: (version, bytes)}`` for the changed files only.
    """
    tmd = Metadata[Targets].from_bytes(files["targets.json"])
    smd = Metadata[Snapshot].from_bytes(files["snapshot.json"])
    tsmd = Metadata[Timestamp].from_bytes(files["timestamp.json"])
    changed: dict[str, tuple[int, bytes]] = {}
    if signers.targets and (Targets.type in force or due(tmd.signed.expires, expiry.targets, now)):
        changed["targets.json"] = _resign(tmd, signers.targets, now + expiry.targets)
    if changed or Snapshot.type in force or due(smd.signed.expires, expiry.snapshot, now):
        smd.signed.meta["targets.json"] = MetaFile(tmd.signed.version)
        changed["snapshot.json"] = _resign(smd, signers.snapshot, now + expiry.snapshot)
    if changed or Timestamp.type in force or due(tsmd.signed.expires, expiry.timestamp, now):
        tsmd.signed.snapshot_meta = MetaFile(smd.signed.version)
        changed["timestamp.json"] = _resign(tsmd, signers.timestamp, now + expiry.timestamp)
    return changed


def _resign(md: Metadata[Any], signers: Sequence[Signer], expires: datetime) -> tuple[int, bytes]:
    md.signed.version += 1
    md.signed.expires = expires
    md.signatures.clear()
    return md.signed.version, _sign(md, signers)


def publish_targets(
    targets: Mapping[str, TargetFile],
    signers: RoleSigners,
    expiry: Expiry,
    now: datetime,
    previous: RepoVersions,
    *,
    extra: Mapping[str, object] | None = None,
) -> tuple[RepoVersions, dict[str, bytes]]:
    """Sign a new targets, snapshot and timestamp; return the new versions and file bytes.

    ``extra`` lands in the targets' signed part as unrecognized fields (the
    Director puts the VIN there) and so is covered by the signature.
    """
    tmd = unsigned_targets(targets, previous.targets + 1, now + expiry.targets, extra=extra)
    targets_bytes = _sign(tmd, signers.targets)
    versions, files = sign_snapshot_and_timestamp(previous.targets + 1, signers, expiry, now, previous)
    return versions, {"targets.json": targets_bytes, **files}


def bundle_target_path(hardware_id: str, version: str) -> str:
    return f"bundles/{hardware_id}/{version}.otab"


def image_target(
    path: str,
    length: int,
    sha256: str,
    hardware_id: str,
    version: str,
    release_counter: int,
    *,
    image_sha256: str | None = None,
    image_size: int | None = None,
) -> TargetFile:
    """A released bundle; ``image_sha256``/``image_size`` sign the image inside it (what a delta rebuilds)."""
    custom: dict[str, Any] = {"hardware_id": hardware_id, "version": version, "release_counter": release_counter}
    if image_sha256 is not None and image_size is not None:
        custom.update({"image_sha256": image_sha256, "image_size": image_size})
    return TargetFile(length, {"sha256": sha256}, path, {"custom": custom})


def delta_target_path(hardware_id: str, base_image_sha256: str, version: str) -> str:
    """Where the delta from the image ``base_image_sha256`` to ``version`` is listed.

    The agent computes it from its running slot's hash, so it looks one path up
    instead of searching the repository.
    """
    return f"deltas/{hardware_id}/{base_image_sha256[:16]}-to-{version}.bsdiff"


def delta_target(
    path: str,
    length: int,
    sha256: str,
    *,
    delta_for: str,
    base_image_sha256: str,
    image_sha256: str,
    image_size: int,
) -> TargetFile:
    """A binary delta turning the image ``base_image_sha256`` into the image of bundle ``delta_for``."""
    custom = {
        "delta_for": delta_for,
        "base_image_sha256": base_image_sha256,
        "image_sha256": image_sha256,
        "image_size": image_size,
    }
    return TargetFile(length, {"sha256": sha256}, path, {"custom": custom})


ECU_FAILURE_POLICIES = ("all_or_nothing", "keep_successful")


def director_target(
    image: TargetFile,
    vin: str,
    ecu_serial: str,
    *,
    min_release_counter: int | None = None,
    ecu_failure_policy: str | None = None,
) -> TargetFile:
    """The Director's copy of ``image`` for one ECU; ``min_release_counter`` is the recall's floor.

    ``ecu_failure_policy`` is signed only when it is not the default (all or nothing), so a
    default recall's metadata is unchanged for older agents.
    """
    custom = dict(image.custom)
    custom.update({"vin": vin, "ecu_serial": ecu_serial})
    if min_release_counter is not None:
        custom["min_release_counter"] = min_release_counter
    if ecu_failure_policy not in (None, ECU_FAILURE_POLICIES[0]):
        custom["ecu_failure_policy"] = ecu_failure_policy
    return TargetFile(image.length, dict(image.hashes), image.path, {"custom": custom})


def _custom_field(tf: TargetFile, key: str) -> object:
    try:
        return tf.custom[key]
    except (KeyError, TypeError) as exc:
        raise TargetMismatch(FailureReason.METADATA_INVALID, f"target {tf.path} has no custom {key!r}") from exc


def assignments_for(director: Targets, vin: str, ecus: Mapping[str, str]) -> list[Assignment]:
    """The Director's assignments for ``vin``; ``ecus`` maps ECU serial to hardware id.

    Refuses metadata for another VIN, for an ECU this car does not have, or for
    hardware the ECU is not.
    """
    signed_vin = director.unrecognized_fields.get("vin")
    if signed_vin != vin:
        raise TargetMismatch(FailureReason.NOT_FOR_THIS_VEHICLE, f"director metadata is for VIN {signed_vin!r}")
    if not director.targets:
        raise TargetMismatch(FailureReason.NO_DIRECTOR_ASSIGNMENT, "the Director assigns nothing to this vehicle")
    found = []
    for tf in director.targets.values():
        if _custom_field(tf, "vin") != vin:
            raise TargetMismatch(FailureReason.NOT_FOR_THIS_VEHICLE, f"target {tf.path} is for another VIN")
        serial = str(_custom_field(tf, "ecu_serial"))
        if serial not in ecus:
            raise TargetMismatch(FailureReason.UNKNOWN_ECU, f"target {tf.path} is for unknown ECU {serial!r}")
        hardware_id = str(_custom_field(tf, "hardware_id"))
        if hardware_id != ecus[serial]:
            raise TargetMismatch(
                FailureReason.HARDWARE_MISMATCH, f"ECU {serial} is {ecus[serial]!r}, target is for {hardware_id!r}"
            )
        sha256 = tf.hashes.get("sha256")
        if not sha256:
            raise TargetMismatch(FailureReason.METADATA_INVALID, f"target {tf.path} has no sha256")
        counter = _custom_field(tf, "release_counter")
        if not isinstance(counter, int):
            raise TargetMismatch(FailureReason.METADATA_INVALID, f"target {tf.path} release_counter is not an integer")
        version = str(_custom_field(tf, "version"))
        image_sha256, image_size = _signed_image(tf)
        floor = tf.custom.get("min_release_counter") if isinstance(tf.custom, dict) else None
        if floor is not None and (not isinstance(floor, int) or isinstance(floor, bool) or floor < 0):
            raise TargetMismatch(FailureReason.METADATA_INVALID, f"target {tf.path} min_release_counter is malformed")
        policy = tf.custom.get("ecu_failure_policy") if isinstance(tf.custom, dict) else None
        if policy is not None and policy not in ECU_FAILURE_POLICIES:
            raise TargetMismatch(FailureReason.METADATA_INVALID, f"target {tf.path} ecu_failure_policy is unknown")
        found.append(
            Assignment(
                tf.path,
                serial,
                hardware_id,
                version,
                counter,
                tf.length,
                sha256,
                image_sha256,
                image_size,
                floor,
                policy,
            )
        )
    return found


def _signed_image(tf: TargetFile) -> tuple[str | None, int | None]:
    """The optional signed image hash and size; both or neither, well formed."""
    custom = tf.custom if isinstance(tf.custom, dict) else {}
    sha, size = custom.get("image_sha256"), custom.get("image_size")
    if sha is None and size is None:
        return None, None
    if not isinstance(sha, str) or len(sha) != 64 or not isinstance(size, int) or size < 0:
        raise TargetMismatch(FailureReason.METADATA_INVALID, f"target {tf.path} has a malformed image hash or size")
    return sha, size


def check_image_agrees(assignment: Assignment, image: TargetFile | None) -> None:
    """The Image repository must list the same bundle (length, hash, hardware, version)."""
    if image is None:
        raise TargetMismatch(FailureReason.TARGET_NOT_IN_IMAGE_REPO, f"{assignment.path} is not a released image")
    if image.length != assignment.length or image.hashes.get("sha256") != assignment.sha256:
        raise TargetMismatch(
            FailureReason.TARGET_MISMATCH,
            f"{assignment.path}: Director and Image repository disagree on length or hash",
        )
    if _signed_image(image) != (assignment.image_sha256, assignment.image_size):
        raise TargetMismatch(
            FailureReason.TARGET_MISMATCH,
            f"{assignment.path}: Director and Image repository disagree on the image hash or size",
        )
    for key in ("hardware_id", "version", "release_counter"):
        if _custom_field(image, key) != getattr(assignment, key):
            raise TargetMismatch(
                FailureReason.HARDWARE_MISMATCH if key == "hardware_id" else FailureReason.TARGET_MISMATCH,
                f"{assignment.path}: Director and Image repository disagree on {key}",
            )
