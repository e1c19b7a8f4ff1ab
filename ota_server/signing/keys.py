"""Signing keys on disk: development keys made on first run, reused on every restart.

Keys live as unencrypted PEM (PKCS#8) under ``<data_dir>/keys/``. That is fine
for a demo and for development, and wrong for production (use an HSM or KMS
signer through securesystemslib), hence the loud warning when they are made.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from firmware_bundles.uptane import RoleSigners
from ota_server.errors import NotReady

log = logging.getLogger(__name__)

IMAGE_ROLES = ("root", "targets", "snapshot", "timestamp")
DIRECTOR_KEYS = ("root", "online")


def _write_private(path: Path, data: bytes) -> None:
    """Write with 0600 and rename into place so a crash never leaves half a key."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _load(path: Path) -> CryptoSigner:
    try:
        return CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))
    except (OSError, ValueError) as exc:
        raise NotReady(f"cannot load signing key {path}: {exc}") from exc


def _load_or_generate(directory: Path, names: tuple[str, ...]) -> dict[str, CryptoSigner]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.pem" for name in names}
    present = [p.exists() for p in paths.values()]
    if all(present):
        return {name: _load(path) for name, path in paths.items()}
    if any(present):
        raise NotReady(f"{directory} holds only some of its keys {list(names)}; restore them or remove the directory")
    signers = {name: CryptoSigner.generate_ed25519() for name in names}
    for name, signer in signers.items():
        _write_private(paths[name], signer.private_bytes)
    log.warning(
        "!!! GENERATED DEVELOPMENT SIGNING KEYS in %s: unencrypted, on local disk. "
        "Do NOT use them for real vehicles; keep this directory to keep the same trust root. !!!",
        directory,
    )
    return signers


def image_signers(keys_dir: Path) -> RoleSigners:
    """One key per top-level role of the Image repository."""
    keys = _load_or_generate(keys_dir / "image", IMAGE_ROLES)
    return RoleSigners([keys["root"]], [keys["targets"]], [keys["snapshot"]], [keys["timestamp"]])


def director_signers(keys_dir: Path) -> RoleSigners:
    """The Director's layout: an offline root and one online key for everything it signs per VIN."""
    keys = _load_or_generate(keys_dir / "director", DIRECTOR_KEYS)
    online = keys["online"]
    return RoleSigners([keys["root"]], [online], [online], [online])
