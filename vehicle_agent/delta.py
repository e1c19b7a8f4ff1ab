"""Delta updates: rebuild the assigned image from the running slot and a signed binary delta.

The server lists a bsdiff4 delta as its own Image-repository target at a path made
from (hardware id, base image sha256, version), so the agent hashes its running
slot and asks the verified Image repository for exactly that path: no listing, no
search, and a delta the signed metadata does not name is never used. The delta is
downloaded like any target (signed length and hash), applied in memory (hence the
image size cap), and the rebuilt image must match the image hash and size the
repository signed for the assigned bundle. Any refusal or error means "download
the full bundle": a delta only ever saves bytes, it never decides an update.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

import bsdiff4
from bsdiff4 import core as bsdiff_core
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from firmware_bundles.uptane import Assignment, delta_target_path
from vehicle_agent.fetcher import BundleFetcher, verified_file

log = logging.getLogger(__name__)

BSDIFF_MAGIC = b"BSDIFF40"
_HEADER = 32  # magic, then three 8-byte sizes: control, diff, new file


class DeltaRefused(Exception):
    """This delta cannot be used; the caller falls back to the full bundle."""


@runtime_checkable
class ReadableSlots(Protocol):
    """What a delta needs from a slot backend: the running slot's bytes."""

    def booted_slot(self) -> str: ...
    def open_image(self, slot: str) -> IO[bytes]: ...


def image_path(downloads: Path, assignment: Assignment) -> Path:
    """Where the image rebuilt for ``assignment``'s bundle waits for the install step."""
    return downloads / f"{assignment.sha256}.img"


def rebuilt_image(downloads: Path, assignment: Assignment) -> Path | None:
    """A rebuilt image, re-hashed against the signed image hash before it is trusted again."""
    if assignment.image_sha256 is None or assignment.image_size is None:
        return None
    return verified_file(image_path(downloads, assignment), assignment.image_size, assignment.image_sha256)


def check_delta_target(info: TargetFile, assignment: Assignment, base_sha256: str) -> None:
    """The signed delta must say it turns our running image into the assigned bundle's image."""
    custom = info.custom if isinstance(info.custom, dict) else {}
    expected = {
        "delta_for": assignment.path,
        "base_image_sha256": base_sha256,
        "image_sha256": assignment.image_sha256,
        "image_size": assignment.image_size,
    }
    for key, value in expected.items():
        if custom.get(key) != value:
            raise DeltaRefused(f"{info.path}: signed {key} {custom.get(key)!r}, expected {value!r}")
    if "sha256" not in info.hashes:
        raise DeltaRefused(f"{info.path}: no sha256")


def patched_size(patch: bytes) -> int:
    """The new file size a bsdiff4 patch announces (checked before any memory is spent on it)."""
    if len(patch) < _HEADER or not patch.startswith(BSDIFF_MAGIC):
        raise DeltaRefused("not a bsdiff4 patch")
    size: int = bsdiff_core.decode_int64(patch[24:32])
    return size


class DeltaApplier:
    """Tries the delta for one assignment; blocking, run in the agent's worker thread."""

    def __init__(self, fetcher: BundleFetcher, *, max_image_bytes: int) -> None:
        self._fetcher = fetcher
        self._max = max_image_bytes

    def try_delta(self, assignment: Assignment, image_repo: Updater, slots: object) -> Path | None:
        """The verified rebuilt image, or ``None``: then the caller downloads the full bundle."""
        size = assignment.image_size
        if assignment.image_sha256 is None or size is None or size > self._max:
            return None
        existing = rebuilt_image(self._fetcher.downloads, assignment)
        if existing is not None:
            return existing
        if not isinstance(slots, ReadableSlots):
            return None
        try:
            return self._rebuild(assignment, image_repo, slots)
        except Exception as exc:  # any failure only costs the delta: the full bundle is the fallback
            log.warning(
                "%s: delta not used (%s: %s); downloading the full bundle", assignment.path, type(exc).__name__, exc
            )
            image_path(self._fetcher.downloads, assignment).unlink(missing_ok=True)
            return None

    def _running_image(self, slots: ReadableSlots) -> bytes | None:
        with slots.open_image(slots.booted_slot()) as fh:
            return read_at_most(fh, self._max)

    def _rebuild(self, assignment: Assignment, image_repo: Updater, slots: ReadableSlots) -> Path | None:
        base = self._running_image(slots)
        if base is None:
            return None
        base_sha256 = hashlib.sha256(base).hexdigest()
        info = image_repo.get_targetinfo(delta_target_path(assignment.hardware_id, base_sha256, assignment.version))
        if info is None:
            return None
        check_delta_target(info, assignment, base_sha256)
        delta_sha256 = info.hashes["sha256"]
        downloads = self._fetcher.downloads
        delta_file = downloads / f"{delta_sha256}.delta"
        try:
            self._fetcher.download(info.path, info.length, delta_sha256, delta_file)
            image = self._apply(base, delta_file.read_bytes(), assignment)
        finally:  # deltas are small: no partial file is kept for later
            delta_file.unlink(missing_ok=True)
            (downloads / f"{delta_sha256}.part").unlink(missing_ok=True)
        log.info(
            "%s: rebuilt from a %d-byte delta instead of the %d-byte bundle",
            assignment.path,
            info.length,
            assignment.length,
        )
        return self._store(image, image_path(downloads, assignment))

    @staticmethod
    def _apply(base: bytes, patch: bytes, assignment: Assignment) -> bytes:
        if patched_size(patch) != assignment.image_size:
            raise DeltaRefused(
                f"the patch makes {patched_size(patch)} bytes, the signed image is {assignment.image_size}"
            )
        image: bytes = bsdiff4.patch(base, patch)
        if len(image) != assignment.image_size or hashlib.sha256(image).hexdigest() != assignment.image_sha256:
            raise DeltaRefused("the rebuilt image differs from the signed image hash")
        return image

    @staticmethod
    def _store(image: bytes, final: Path) -> Path:
        tmp = final.with_name(final.name + ".part")
        with tmp.open("wb") as out:
            out.write(image)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, final)
        return final


_READ_CHUNK = 1 << 20


def read_at_most(fh: IO[bytes], limit: int) -> bytes | None:
    """All of ``fh`` if it holds at most ``limit`` bytes, else None, in 1 MiB reads.

    One ``read(limit + 1)`` allocates the whole limit first (32 MiB by default): 135 µs for a
    64 KiB image where this takes 33 µs (issue 19), and 32 MiB of memory a Pi need not touch.
    """
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = fh.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return None if total > limit else b"".join(chunks)
