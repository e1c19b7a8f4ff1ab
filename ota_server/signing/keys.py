"""Signing keys on disk, found by key id, and matched to what the current root trusts.

Two places hold keys. The server's keys directory (``<data_dir>/keys/image``,
``.../director``) holds the ONLINE keys the running server signs with (snapshot,
timestamp, the Director's key). The offline directory given to ``ota keys`` holds
the root and targets keys (optionally encrypted); the server never reads it.

Without ``ota keys init`` the server makes development keys on first run, every
role on local disk, unencrypted, with a loud warning: fine for a demo, wrong for
real vehicles.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Root

from firmware_bundles.uptane import TOP_LEVEL_ROLES, RoleSigners
from ota_server.errors import NotReady
from ota_server.signing.store import latest_root

log = logging.getLogger(__name__)

IMAGE_ROLES = ("root", "targets", "snapshot", "timestamp")
DIRECTOR_KEYS = ("root", "online")
ONLINE_ROLES = ("snapshot", "timestamp")
RETIRED = "retired"


def _write_private(path: Path, data: bytes) -> None:
    """Write with 0600 and rename into place so a crash never leaves half a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def new_key() -> CryptoSigner:
    return CryptoSigner(Ed25519PrivateKey.generate())


def key_file(directory: Path, name: str, signer: CryptoSigner) -> Path:
    """Where ``ota keys`` keeps a key: named by its role and key id, so rotations never overwrite."""
    return directory / f"{name}-{signer.public_key.keyid[:16]}.pem"


def save_key(path: Path, signer: CryptoSigner, passphrase: bytes | None = None) -> Path:
    """PKCS#8 PEM, encrypted with ``passphrase`` when given."""
    private = signer._private_key  # securesystemslib exposes only the unencrypted bytes
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    _write_private(path, private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption))
    return path


def load_key(path: Path, passphrase: bytes | None = None) -> CryptoSigner:
    try:
        data = path.read_bytes()
        encrypted = b"ENCRYPTED" in data.split(b"\n", 1)[0]
        if encrypted and not passphrase:
            raise NotReady(f"{path} is encrypted: give its passphrase (--passphrase-env VAR or --prompt-passphrase)")
        return CryptoSigner(load_pem_private_key(data, password=passphrase if encrypted else None))
    except (OSError, ValueError, TypeError) as exc:
        raise NotReady(f"cannot load signing key {path}: {exc}") from exc


def retire(path: Path) -> None:
    """Move a replaced key aside (``retired/``) rather than delete it: it may be needed to investigate."""
    target = path.parent / RETIRED / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)


class Keyring:
    """Every ``*.pem`` of some directories, by key id; re-read when an unknown id is asked for."""

    def __init__(self, directories: Iterable[Path], passphrase: bytes | None = None) -> None:
        self.directories = tuple(directories)
        self._passphrase = passphrase
        self._keys: dict[str, tuple[CryptoSigner, Path]] = {}
        self._scan()

    def _scan(self) -> None:
        for directory in self.directories:
            for path in sorted(directory.glob("*.pem")) if directory.is_dir() else ():
                if any(p == path for _, p in self._keys.values()):
                    continue
                signer = load_key(path, self._passphrase)
                self._keys[signer.public_key.keyid] = (signer, path)

    def get(self, keyid: str) -> CryptoSigner | None:
        if keyid not in self._keys:
            self._scan()
        found = self._keys.get(keyid)
        return found[0] if found else None

    def path_of(self, keyid: str) -> Path | None:
        found = self._keys.get(keyid)
        return found[1] if found else None

    def for_role(self, root: Root, role: str) -> list[CryptoSigner]:
        """The keys held here that ``root`` trusts for ``role``."""
        return [s for keyid in root.roles[role].keyids if (s := self.get(keyid)) is not None]

    def role_signers(self, root: Root) -> RoleSigners:
        return RoleSigners(*(self.for_role(root, role) for role in TOP_LEVEL_ROLES))


class RepoKeys:
    """A repository's signers as the CURRENT root names them, so a rotation takes effect at once.

    Snapshot and timestamp (and, for the Director, targets) must be online: fewer
    keys than the threshold is :class:`NotReady`. An Image targets role the server
    holds no threshold for is offline: releases then wait for ``ota releases sign``.
    """

    def __init__(self, repo: str, keyring: Keyring, online: Sequence[str] = ONLINE_ROLES) -> None:
        self.repo = repo
        self.keyring = keyring
        self._online = tuple(online)
        self._cache: tuple[int, RoleSigners] | None = None

    def root(self, session: Session) -> Metadata[Root]:
        row = latest_root(session, self.repo)
        if row is None:
            raise NotReady(f"the {self.repo} repository has no root yet")
        return Metadata[Root].from_bytes(row.data)

    def signers(self, session: Session) -> RoleSigners:
        root = self.root(session).signed
        if self._cache is not None and self._cache[0] == root.version:
            return self._cache[1]
        found = {role: self.keyring.for_role(root, role) for role in TOP_LEVEL_ROLES}
        for role in self._online:
            if len(found[role]) < root.roles[role].threshold:
                raise NotReady(
                    f"the {self.repo} repository's root v{root.version} does not trust enough {role} keys on "
                    f"this server: it needs {root.roles[role].threshold}, {len(found[role])} found in "
                    f"{', '.join(map(str, self.keyring.directories))}; restore the keys directory, "
                    f"run `ota keys rotate {role}`, or start with a fresh database"
                )
        if len(found["targets"]) < root.roles["targets"].threshold:
            found["targets"] = []
        signers = RoleSigners(*(found[role] for role in TOP_LEVEL_ROLES))
        self._cache = (root.version, signers)
        return signers


def _load_or_generate(directory: Path, names: tuple[str, ...]) -> dict[str, CryptoSigner]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.pem" for name in names}
    present = [p.exists() for p in paths.values()]
    if all(present):
        return {name: load_key(path) for name, path in paths.items()}
    if any(present) or any(directory.glob("*.pem")):
        raise NotReady(
            f"{directory} holds only some of its keys {list(names)} and the database has no root; "
            "restore them, run `ota keys init`, or remove the directory"
        )
    signers = {name: new_key() for name in names}
    for name, signer in signers.items():
        save_key(paths[name], signer)
    log.warning(
        "!!! GENERATED DEVELOPMENT SIGNING KEYS in %s: unencrypted, on local disk. "
        "Do NOT use them for real vehicles (see `ota keys init`); keep this directory to keep the same trust root. !!!",
        directory,
    )
    return signers


def image_signers(keys_dir: Path) -> RoleSigners:
    """Development keys: one per top-level role of the Image repository, all on the server."""
    keys = _load_or_generate(keys_dir / "image", IMAGE_ROLES)
    return RoleSigners([keys["root"]], [keys["targets"]], [keys["snapshot"]], [keys["timestamp"]])


def director_signers(keys_dir: Path) -> RoleSigners:
    """The Director's layout: a root key and one online key for everything it signs per VIN."""
    keys = _load_or_generate(keys_dir / "director", DIRECTOR_KEYS)
    online = keys["online"]
    return RoleSigners([keys["root"]], [online], [online], [online])
