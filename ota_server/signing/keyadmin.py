"""``ota keys``: the key ceremony (init), rotation and revocation, straight on the database.

Runs where the server's keys directory is (it writes the online keys there) with
the offline directory mounted for the duration (root and targets keys, and the
Director's root key). A new root version is signed by a threshold of the OLD root
keys and of the NEW ones, so a car holding any older root walks the chain
(``N.root.json``) and ends up trusting only the new keys. The running server reads
the current root on each signing and picks its keys by id, so no restart is needed.

Each command does its database work in the caller's session and writes the new
key files; the caller commits, then calls :func:`retire` to move replaced keys aside.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from sqlalchemy.orm import Session
from tuf.api import exceptions as tuf_exceptions
from tuf.api.metadata import Metadata, Root

from firmware_bundles.uptane import Expiry, RepoVersions, RoleSigners, create_root, publish_targets, sign_metadata
from ota_server.errors import Conflict, InvalidInput, NotFound, NotReady
from ota_server.signing import keys as keyfiles
from ota_server.signing.director import DIRECTOR_ONLINE_ROLES, Director
from ota_server.signing.image_repo import PENDING_TARGETS, ImageRepository
from ota_server.signing.keys import Keyring, RepoKeys, key_file, new_key, save_key
from ota_server.signing.store import DIRECTOR, IMAGE, REPO_WIDE, get_file, latest_root, put_chain, put_file

ROOT_KEYS = 3
ROOT_THRESHOLD = 2
ROTATABLE = ("root", "targets", "snapshot", "timestamp", "director")
_OFFLINE_ROLES = ("root", "targets")


@dataclass(frozen=True)
class KeyDirs:
    """Where keys live: ``offline`` (root, targets, Director root) and the server's ``keys_dir``."""

    offline: Path
    keys_dir: Path
    passphrase: bytes | None = None

    @property
    def image(self) -> Path:
        return self.keys_dir / "image"

    @property
    def director(self) -> Path:
        return self.keys_dir / "director"

    def keyring(self, repo: str) -> Keyring:
        return Keyring([self.offline, self.image if repo == IMAGE else self.director], self.passphrase)


@dataclass
class KeyChange:
    """What a command did, for the CLI to print; ``to_retire`` is moved aside after the commit."""

    roots: dict[str, int] = field(default_factory=dict)  # repo -> new root version
    written: list[Path] = field(default_factory=list)
    to_retire: list[Path] = field(default_factory=list)
    resigned: list[str] = field(default_factory=list)


def retire(change: KeyChange) -> None:
    for path in change.to_retire:
        if path.exists():
            keyfiles.retire(path)


def _pem_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.pem")) if directory.is_dir() else []


def init(session: Session, dirs: KeyDirs, expiry: Expiry, now: datetime) -> KeyChange:
    """Make every key and both roots (the Image root: 2 of 3 keys) on a database that has none.

    The Image repository's first (empty) targets is signed here with the offline
    targets key, so the server serves a complete chain before any release.
    """
    for repo in (IMAGE, DIRECTOR):
        row = latest_root(session, repo)
        if row is not None:
            raise Conflict(f"the {repo} repository already has a root (v{row.version}); use `ota keys rotate`")
    for directory in (dirs.offline, dirs.image, dirs.director):
        if _pem_files(directory):
            raise Conflict(f"{directory} already holds keys; give an empty directory")
    roots = [new_key() for _ in range(ROOT_KEYS)]
    targets, snapshot, timestamp = new_key(), new_key(), new_key()
    director_root, director_online = new_key(), new_key()
    image = RoleSigners(roots, [targets], [snapshot], [timestamp])
    director = RoleSigners([director_root], [director_online], [director_online], [director_online])
    image_root = create_root(image, now + expiry.root, thresholds={"root": ROOT_THRESHOLD})
    put_file(session, IMAGE, REPO_WIDE, "1.root.json", 1, image_root, now)
    director_md = create_root(director, now + expiry.root, consistent_snapshot=True)  # chains fetched by version
    put_file(session, DIRECTOR, REPO_WIDE, "1.root.json", 1, director_md, now)
    versions, files = publish_targets({}, image, expiry, now, RepoVersions())
    put_chain(session, IMAGE, REPO_WIDE, versions, files, now)
    session.flush()
    offline = [
        *((f"root{i}", k) for i, k in enumerate(roots, 1)),
        ("targets", targets),
        ("director-root", director_root),
    ]
    change = KeyChange(roots={IMAGE: 1, DIRECTOR: 1})
    for label, key in offline:
        change.written.append(save_key(key_file(dirs.offline, label, key), key, dirs.passphrase))
    for directory, label, key in (
        (dirs.image, "snapshot", snapshot),
        (dirs.image, "timestamp", timestamp),
        (dirs.director, "online", director_online),
    ):
        change.written.append(save_key(key_file(directory, label, key), key))
    return change


def _current(session: Session, repo: str) -> Metadata[Root]:
    row = latest_root(session, repo)
    if row is None:
        raise NotFound(f"the {repo} repository has no root; run `ota keys init` (or start the server once)")
    return Metadata[Root].from_bytes(row.data)


def _next_root(current: Metadata[Root], expiry: Expiry, now: datetime) -> Root:
    new = Metadata[Root].from_bytes(current.to_bytes()).signed
    new.version += 1
    new.expires = now + expiry.root
    return new


def _root_signers(
    keyring: Keyring, old: Root, new: Root, fresh: Iterable[CryptoSigner], *, without: str | None = None
) -> list[CryptoSigner]:
    """Every held key of the old and the new root role (never ``without``, a key being revoked)."""
    trusted = set(old.roles["root"].keyids) | set(new.roles["root"].keyids)
    found: dict[str, CryptoSigner] = {}
    for signer in (*keyring.for_role(old, "root"), *keyring.for_role(new, "root"), *fresh):
        keyid = signer.public_key.keyid
        if keyid in trusted and keyid != without:
            found[keyid] = signer
    held_old = len(set(found) & set(old.roles["root"].keyids))
    if held_old < old.roles["root"].threshold:
        raise NotReady(
            f"root v{old.version} needs {old.roles['root'].threshold} of its root keys to sign v{new.version}; "
            f"{held_old} usable found in {', '.join(map(str, keyring.directories))}"
        )
    return list(found.values())


def _publish_root(
    session: Session, repo: str, old: Root, new: Root, signers: list[CryptoSigner], now: datetime
) -> None:
    data = sign_metadata(Metadata(new), signers)
    md = Metadata[Root].from_bytes(data)
    try:
        old.verify_delegate("root", md.signed_bytes, md.signatures)  # cars holding the old root accept it...
        new.verify_delegate("root", md.signed_bytes, md.signatures)  # ...and it verifies under itself
    except tuf_exceptions.UnsignedMetadataError as exc:
        raise NotReady(f"cannot sign root v{new.version} with the keys at hand: {exc}") from exc
    put_file(session, repo, REPO_WIDE, f"{new.version}.root.json", new.version, data, now)
    session.flush()


def rotate(session: Session, dirs: KeyDirs, role: str, expiry: Expiry, now: datetime) -> KeyChange:
    """Replace ``role``'s keys (``director``: the Director's online key) in a new root version.

    What the replaced keys had signed is re-signed with the new ones (Director:
    every VIN's chain) in the same transaction; the caller commits.
    """
    if role not in ROTATABLE:
        raise InvalidInput(f"role must be one of {', '.join(ROTATABLE)}, not {role!r}")
    repo = DIRECTOR if role == "director" else IMAGE
    roles = DIRECTOR_ONLINE_ROLES if role == "director" else (role,)
    keyring = dirs.keyring(repo)
    current = _current(session, repo)
    old, new = current.signed, _next_root(current, expiry, now)
    fresh = [new_key() for _ in range(max(len(old.roles[roles[0]].keyids), old.roles[roles[0]].threshold))]
    for name in roles:
        for keyid in list(new.roles[name].keyids):
            new.revoke_key(keyid, name)
        for key in fresh:
            new.add_key(key.public_key, name)
    _publish_root(session, repo, old, new, _root_signers(keyring, old, new, fresh), now)
    change = KeyChange(roots={repo: new.version})
    change.resigned = _resign(session, RepoKeys(repo, _WithExtra(keyring, fresh)), repo, role, now, expiry)
    where = dirs.offline if role in _OFFLINE_ROLES else (dirs.director if repo == DIRECTOR else dirs.image)
    label = "online" if role == "director" else role
    for i, key in enumerate(fresh, 1):
        name = f"{label}{i}" if len(fresh) > 1 else label
        change.written.append(
            save_key(key_file(where, name, key), key, dirs.passphrase if where == dirs.offline else None)
        )
    replaced = {keyid for name in roles for keyid in old.roles[name].keyids} - _in_use(new)
    change.to_retire = [p for keyid in replaced if (p := keyring.path_of(keyid)) is not None]
    return change


def _in_use(root: Root) -> set[str]:
    return {keyid for role in root.roles.values() for keyid in role.keyids}


def _resign(session: Session, keys: RepoKeys, repo: str, role: str, now: datetime, expiry: Expiry) -> list[str]:
    """Re-sign, with the new root's keys, what the replaced keys had signed."""
    if role == "root":
        return []
    if repo == DIRECTOR:
        director = Director(keys, expiry)
        vins = director.vins(session)
        for vin in vins:
            director.refresh(session, vin, now, force=DIRECTOR_ONLINE_ROLES)
        return [f"the Director chains of {len(vins)} vehicle(s)"]
    image = ImageRepository(keys, expiry)
    resigned = image.refresh(session, now, force=(role,))
    if role == "targets" and get_file(session, IMAGE, REPO_WIDE, PENDING_TARGETS) is not None:
        image.prepare_pending(session, now)  # the pending payload follows the new targets version
    return resigned


class _WithExtra(Keyring):
    """A keyring that also knows the new keys, written to disk only after the database work."""

    def __init__(self, base: Keyring, extra: Iterable[CryptoSigner]) -> None:
        self.directories = base.directories
        self._base = base
        self._extra = {s.public_key.keyid: s for s in extra}

    def get(self, keyid: str) -> CryptoSigner | None:
        return self._extra.get(keyid) or self._base.get(keyid)


def _trusting(session: Session, keyid: str) -> tuple[str, Metadata[Root], list[str]]:
    for repo in (IMAGE, DIRECTOR):
        current = _current(session, repo)
        roles = [name for name, role in current.signed.roles.items() if keyid in role.keyids]
        if roles:
            return repo, current, roles
    raise NotFound(f"no role of the Image or Director root trusts key {keyid}")


def revoke(session: Session, dirs: KeyDirs, keyid: str, expiry: Expiry, now: datetime) -> KeyChange:
    """Remove ``keyid`` from every role that trusts it, in a new root version it does not sign.

    Refused (InvalidInput) when a role would keep fewer keys than its threshold;
    what the key had signed is re-signed by the remaining keys.
    """
    repo, current, roles = _trusting(session, keyid)
    old, new = current.signed, _next_root(current, expiry, now)
    for name in roles:
        left, threshold = len(old.roles[name].keyids) - 1, old.roles[name].threshold
        if left < threshold:
            raise InvalidInput(
                f"revoking {keyid} would leave the {repo} {name} role with {left} key(s), below its threshold "
                f"{threshold}; rotate the role instead (`ota keys rotate {name}`)"
            )
        new.revoke_key(keyid, name)
    keyring = dirs.keyring(repo)
    _publish_root(session, repo, old, new, _root_signers(keyring, old, new, (), without=keyid), now)
    change = KeyChange(roots={repo: new.version})
    signed_roles = tuple(r for r in roles if r != "root")
    if signed_roles and repo == IMAGE:
        change.resigned = ImageRepository(RepoKeys(repo, keyring), expiry).refresh(session, now, force=signed_roles)
    if (path := keyring.path_of(keyid)) is not None:
        change.to_retire.append(path)
    return change
