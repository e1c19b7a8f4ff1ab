"""Download a bundle, checking its signed length and sha256 while the bytes arrive.

The bundle lands in ``downloads/<sha256>.part`` and is renamed to ``<sha256>.otab``
only after the digest matched, so a file without ``.part`` is always the verified
bundle. More bytes than the signed length abort at once (endless data); a server
trickling bytes is stopped by the total deadline (slow retrieval).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from firmware_bundles import repo_paths
from firmware_bundles.messages import FailureReason
from firmware_bundles.uptane import Assignment
from vehicle_agent.errors import FetchError, UpdateFailed
from vehicle_agent.transport import Transport


def bundle_path(downloads: Path, sha256: str) -> Path:
    return downloads / f"{sha256}.otab"


def file_sha256(path: Path, chunk_size: int = 64 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verified_bundle(downloads: Path, assignment: Assignment) -> Path | None:
    """A previously downloaded bundle, re-hashed before it is trusted again."""
    path = bundle_path(downloads, assignment.sha256)
    if not path.exists():
        return None
    if path.stat().st_size == assignment.length and file_sha256(path) == assignment.sha256:
        return path
    path.unlink(missing_ok=True)
    return None


class BundleFetcher:
    """Streams bundles through a :class:`Transport`; blocking, run in a thread."""

    def __init__(
        self,
        transport: Transport,
        repo_url: str,
        downloads: Path,
        *,
        total_timeout: float = 900.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._base = repo_paths.targets_url(repo_url)
        self.downloads = downloads
        self._total_timeout = total_timeout
        self._monotonic = monotonic

    def fetch(self, assignment: Assignment) -> Path:
        """Return the path of the verified bundle; raise :class:`UpdateFailed` otherwise."""
        existing = verified_bundle(self.downloads, assignment)
        if existing is not None:
            return existing
        self.downloads.mkdir(parents=True, exist_ok=True)
        final = bundle_path(self.downloads, assignment.sha256)
        part = final.with_suffix(".part")
        try:
            self._stream_into(assignment, part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, final)
        return final

    def _stream_into(self, assignment: Assignment, part: Path) -> None:
        url = self._base + assignment.path
        digest = hashlib.sha256()
        received = 0
        deadline = self._monotonic() + self._total_timeout
        try:
            with self._transport.stream(url) as chunks, part.open("wb") as out:
                for chunk in chunks:
                    received += len(chunk)
                    if received > assignment.length:
                        raise UpdateFailed(
                            FailureReason.LENGTH_MISMATCH,
                            f"{assignment.path}: more than the signed {assignment.length} bytes arrived",
                        )
                    if self._monotonic() > deadline:
                        raise UpdateFailed(
                            FailureReason.DOWNLOAD_FAILED,
                            f"{assignment.path}: not complete after {self._total_timeout:g} s",
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except FetchError as exc:
            raise UpdateFailed(FailureReason.DOWNLOAD_FAILED, str(exc)) from exc
        if received != assignment.length:
            raise UpdateFailed(
                FailureReason.LENGTH_MISMATCH, f"{assignment.path}: {received} bytes, signed length {assignment.length}"
            )
        if digest.hexdigest() != assignment.sha256:
            raise UpdateFailed(FailureReason.HASH_MISMATCH, f"{assignment.path}: sha256 differs from the signed hash")

    def discard(self, assignment: Assignment) -> None:
        """Drop a bundle once installed (or refused) so the disk does not fill up."""
        for suffix in (".otab", ".part"):
            with contextlib.suppress(FileNotFoundError):
                (self.downloads / f"{assignment.sha256}{suffix}").unlink()
