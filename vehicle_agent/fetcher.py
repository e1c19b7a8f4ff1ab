"""Download a target, checking its signed length and sha256 while the bytes arrive.

A target lands in ``downloads/<sha256>.part`` and is renamed (``<sha256>.otab`` for
a bundle) only after the digest matched, so a file without ``.part`` is always
verified. The partial file is keyed by the signed hash, so an interrupted download
(network cut, power loss) resumes where it stopped: the bytes on disk are hashed
again, then ``Range: bytes=N-`` asks for the rest; a server that answers with the
whole file again restarts it from zero. Memory stays at one chunk whatever the size.

Defences: more bytes than the signed length abort at once (endless data); an
average speed below a floor over a window, or a total deadline across retries,
stop a server trickling bytes (slow retrieval); free disk is checked first.
Transient failures retry with jittered exponential backoff.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_bundles import repo_paths
from firmware_bundles.messages import FailureReason
from firmware_bundles.uptane import Assignment
from vehicle_agent.config import DownloadLimits
from vehicle_agent.errors import FetchError, UpdateFailed, transient_status
from vehicle_agent.transport import Chunks, Transport

# A download that failed for these reasons keeps its partial file: the next try resumes it.
RESUMABLE = frozenset({FailureReason.DOWNLOAD_FAILED})
SUFFIXES = (".otab", ".part", ".img", ".img.part")


def bundle_path(downloads: Path, sha256: str) -> Path:
    return downloads / f"{sha256}.otab"


def file_sha256(path: Path, chunk_size: int = 64 * 1024) -> str:
    return str(_hash_file(path, chunk_size).hexdigest())


def _hash_file(path: Path, chunk_size: int = 64 * 1024) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest


def verified_file(path: Path, length: int, sha256: str) -> Path | None:
    """A file downloaded earlier, re-hashed before it is trusted again (and removed if it fails)."""
    if not path.exists():
        return None
    if path.stat().st_size == length and file_sha256(path) == sha256:
        return path
    path.unlink(missing_ok=True)
    return None


def verified_bundle(downloads: Path, assignment: Assignment) -> Path | None:
    return verified_file(bundle_path(downloads, assignment.sha256), assignment.length, assignment.sha256)


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def _transient(exc: FetchError) -> bool:
    """Worth resuming: no answer, a cut connection, or a server error; not a 404 or 403."""
    return transient_status(exc.status) or exc.status == 416


@dataclass
class _Progress:
    """The bytes on disk and their running digest, always in step."""

    offset: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


@dataclass
class _Speed:
    """Average speed over consecutive windows of ``window`` seconds."""

    started: float
    received: int = 0


class BundleFetcher:
    """Streams targets through a :class:`Transport`; blocking, run in a thread.

    ``sleep``, ``random``, ``monotonic`` and ``free_space`` are injectable so tests
    run retries, backoff and deadlines in simulated time.
    """

    def __init__(
        self,
        transport: Transport,
        repo_url: str,
        downloads: Path,
        *,
        limits: DownloadLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random.random,
        free_space: Callable[[Path], int] = disk_free,
    ) -> None:
        self._transport = transport
        self._base = repo_paths.targets_url(repo_url)
        self.downloads = downloads
        self._limits = limits or DownloadLimits()
        self._monotonic = monotonic
        self._sleep = sleep
        self._random = random
        self._free_space = free_space

    def fetch(self, assignment: Assignment) -> Path:
        """Return the path of the verified bundle; raise :class:`UpdateFailed` otherwise."""
        existing = verified_bundle(self.downloads, assignment)
        if existing is not None:
            return existing
        return self.download(
            assignment.path, assignment.length, assignment.sha256, bundle_path(self.downloads, assignment.sha256)
        )

    def download(self, target_path: str, length: int, sha256: str, final: Path) -> Path:
        """Download the Image repository's ``target_path`` (signed ``length``, ``sha256``) to ``final``."""
        self.downloads.mkdir(parents=True, exist_ok=True)
        part = self.downloads / f"{sha256}.part"
        try:
            self._download(self._base + target_path, part, length, sha256, target_path)
        except UpdateFailed as exc:
            if exc.reason not in RESUMABLE:
                part.unlink(missing_ok=True)
            raise
        os.replace(part, final)
        return final

    def discard(self, assignment: Assignment) -> None:
        """Drop a bundle (and any partial or rebuilt file) once installed or refused."""
        for suffix in SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                (self.downloads / f"{assignment.sha256}{suffix}").unlink()

    # -- one download, several requests ------------------------------------------------

    def _download(self, url: str, part: Path, length: int, sha256: str, what: str) -> None:
        deadline = self._monotonic() + self._limits.total_timeout
        progress = self._resume(part, length)
        resumed = progress.offset > 0
        self._check_space(length - progress.offset, what)
        progress = self._complete(url, part, progress, length, deadline, what)
        if progress.digest.hexdigest() != sha256 and resumed:
            # The kept bytes may be what a power loss left unflushed: one clean download decides.
            progress = self._complete(url, part, self._restart(part), length, deadline, what)
        if progress.digest.hexdigest() != sha256:
            raise UpdateFailed(FailureReason.HASH_MISMATCH, f"{what}: sha256 differs from the signed hash")

    def _complete(
        self, url: str, part: Path, progress: _Progress, length: int, deadline: float, what: str
    ) -> _Progress:
        """Request until all ``length`` bytes are on disk, resuming after each transient failure."""
        failures = 0
        while True:
            try:
                self._request(url, part, progress, length, deadline, what)
                return progress
            except FetchError as exc:
                failures += 1
                if exc.status == 416:  # our range is past the server's file: start again from zero
                    progress = self._restart(part)
                if not _transient(exc) or failures > self._limits.retries:
                    transient = transient_status(exc.status)  # the server's outage: the agent waits it out
                    raise UpdateFailed(FailureReason.DOWNLOAD_FAILED, f"{what}: {exc}", transient=transient) from exc
                self._backoff(failures, deadline, what)

    def _resume(self, part: Path, length: int) -> _Progress:
        """Hash what an earlier try left on disk; a file longer than the signed length is dropped."""
        if not part.exists() or part.stat().st_size > length:
            return self._restart(part)
        return _Progress(part.stat().st_size, _hash_file(part))

    @staticmethod
    def _restart(part: Path) -> _Progress:
        part.unlink(missing_ok=True)
        return _Progress()

    def _check_space(self, needed: int, what: str) -> None:
        free = self._free_space(self.downloads)
        if free < needed + self._limits.disk_reserve_bytes:
            raise UpdateFailed(
                FailureReason.INSUFFICIENT_STORAGE,
                f"{what}: needs {needed} bytes plus a {self._limits.disk_reserve_bytes}-byte reserve, {free} free",
            )

    def _backoff(self, failures: int, deadline: float, what: str) -> None:
        """Full jitter: a random wait up to base * 2^n (capped), so cars do not retry in step."""
        cap = min(self._limits.backoff_max, self._limits.backoff_base * 2 ** (failures - 1))
        delay = cap * self._random()
        if self._monotonic() + delay > deadline:
            raise UpdateFailed(
                FailureReason.DOWNLOAD_TOO_SLOW, f"{what}: not complete after {self._limits.total_timeout:g} s"
            )
        self._sleep(delay)

    def _request(self, url: str, part: Path, progress: _Progress, length: int, deadline: float, what: str) -> None:
        """One HTTP request from ``progress.offset``; returns once all ``length`` bytes are on disk."""
        if progress.offset == length:
            return
        with self._transport.stream(url, start=progress.offset) as chunks:
            if chunks.start != progress.offset:
                if chunks.start != 0:
                    raise FetchError(url, f"asked for bytes from {progress.offset}, got them from {chunks.start}")
                progress.offset, progress.digest = 0, hashlib.sha256()  # a plain 200: the whole file again
            self._write(chunks, part, progress, length, deadline, what)
        if progress.offset < length:
            raise FetchError(url, f"the body ended at {progress.offset} of {length} bytes")

    def _write(self, chunks: Chunks, part: Path, progress: _Progress, length: int, deadline: float, what: str) -> None:
        speed = _Speed(self._monotonic())
        try:
            with part.open("r+b" if part.exists() else "wb") as out:
                out.truncate(progress.offset)
                out.seek(progress.offset)
                for chunk in chunks:
                    if progress.offset + len(chunk) > length:
                        raise UpdateFailed(
                            FailureReason.LENGTH_MISMATCH, f"{what}: more than the signed {length} bytes arrived"
                        )
                    self._check_speed(speed, len(chunk), deadline, what)
                    out.write(chunk)
                    progress.digest.update(chunk)
                    progress.offset += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise UpdateFailed(FailureReason.INSUFFICIENT_STORAGE, f"{what}: disk full while writing") from exc
            raise

    def _check_speed(self, speed: _Speed, size: int, deadline: float, what: str) -> None:
        now = self._monotonic()
        if now > deadline:
            raise UpdateFailed(
                FailureReason.DOWNLOAD_TOO_SLOW, f"{what}: not complete after {self._limits.total_timeout:g} s"
            )
        speed.received += size
        elapsed = now - speed.started
        if elapsed < self._limits.speed_window:
            return
        rate = speed.received / elapsed
        if rate < self._limits.min_bytes_per_second:
            raise UpdateFailed(
                FailureReason.DOWNLOAD_TOO_SLOW,
                f"{what}: {rate:.0f} B/s over {elapsed:g} s, below the floor of "
                f"{self._limits.min_bytes_per_second:g} B/s",
            )
        speed.started, speed.received = now, 0
