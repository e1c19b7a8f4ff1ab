"""A/B slots and the install step: the image goes into the spare slot, never the running one.

A :class:`SlotBackend` models what a bootloader such as U-Boot or RAUC offers: an
active (committed) slot, a one-shot try slot booted once by the next reboot, and a
commit that makes the booted slot active. If the tried slot is not committed, the
reboot after it falls back to the active slot. :class:`FileSlots` keeps the slots as
files and the boot state as a small JSON file written atomically; :class:`MemorySlots`
is the same machine in memory for simulated fleets.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Protocol

from firmware_bundles.assignment import Assignment
from firmware_bundles.bundle import Manifest, image_header, open_bundle, sample_image
from firmware_bundles.errors import InvalidBundle
from firmware_bundles.messages import FailureReason
from vehicle_agent.errors import UpdateFailed
from vehicle_agent.journal import single_writer_temp, write_atomically

SLOTS = ("a", "b")
HEADER_BYTES = 4096
CHUNK = 64 * 1024


class SlotBackend(Protocol):
    def booted_slot(self) -> str: ...
    def active_slot(self) -> str: ...
    def pending_try(self) -> str | None: ...
    def inactive_slot(self) -> str:
        """The slot that may be written: neither active nor booted."""
        ...

    def write_image(self, slot: str, image: IO[bytes]) -> None: ...
    def slot_sha256(self, slot: str) -> str: ...
    def read_header(self, slot: str | None = None) -> dict[str, str] | None:
        """The image header of ``slot`` (default: the booted slot)."""
        ...

    def set_try(self, slot: str) -> None: ...
    def reboot(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def describe(self) -> dict[str, object]:
        """Boot state and slot headers, for ``vehicle-agent status``."""
        ...


@dataclass(frozen=True)
class BootState:
    active: str = "a"
    booted: str = "a"
    try_slot: str | None = None


def _other(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


class ABSlots(ABC):
    """The boot logic shared by every backend; subclasses store bytes and boot state."""

    @abstractmethod
    def _load(self) -> BootState: ...

    @abstractmethod
    def _save(self, state: BootState) -> None: ...

    @abstractmethod
    def _write(self, slot: str, image: IO[bytes]) -> None: ...

    @abstractmethod
    def _reader(self, slot: str) -> IO[bytes]: ...

    def booted_slot(self) -> str:
        return self._load().booted

    def active_slot(self) -> str:
        return self._load().active

    def pending_try(self) -> str | None:
        return self._load().try_slot

    def inactive_slot(self) -> str:
        state = self._load()
        if state.booted != state.active:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, "a trial boot is in progress; no spare slot")
        return _other(state.active)

    def write_image(self, slot: str, image: IO[bytes]) -> None:
        state = self._load()
        if slot not in SLOTS or slot in (state.active, state.booted):
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"refusing to write slot {slot!r}: it is in use")
        if state.try_slot == slot:  # a half-written slot must never be tried
            self._save(replace(state, try_slot=None))
        self._write(slot, image)

    def slot_sha256(self, slot: str) -> str:
        digest = hashlib.sha256()
        with self._reader(slot) as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def measure_slot(self, slot: str) -> tuple[str, int]:
        """The sha256 and length of ``slot``'s image, in one read (the version manifest's measure)."""
        digest, length = hashlib.sha256(), 0
        with self._reader(slot) as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                length += len(chunk)
        return digest.hexdigest(), length

    def slot_fingerprint(self, slot: str) -> Hashable | None:
        """What changes whenever ``slot``'s bytes do, cheaply (None: unknown, measure every time).

        Lets the manifest skip re-hashing an unchanged image every day.
        """
        return None

    def open_image(self, slot: str) -> IO[bytes]:
        """Read a slot's bytes (a delta's base is the running slot's image)."""
        return self._reader(slot)

    def read_header(self, slot: str | None = None) -> dict[str, str] | None:
        with self._reader(slot or self.booted_slot()) as fh:
            return image_header(fh.read(HEADER_BYTES))

    def set_try(self, slot: str) -> None:
        state = self._load()
        if slot == state.active:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"slot {slot} is already the active slot")
        self._save(replace(state, try_slot=slot))

    def reboot(self) -> None:
        state = self._load()
        booted = state.try_slot or state.active
        self._save(BootState(active=state.active, booted=booted, try_slot=None))

    def commit(self) -> None:
        state = self._load()
        self._save(BootState(active=state.booted, booted=state.booted, try_slot=None))

    def rollback(self) -> None:
        """Cancel a pending try and go back to (reboot into) the active slot."""
        state = self._load()
        self._save(BootState(active=state.active, booted=state.active, try_slot=None))

    def describe(self) -> dict[str, object]:
        state = self._load()
        return {**asdict(state), "headers": {slot: self.read_header(slot) for slot in SLOTS}}


class FileSlots(ABSlots):
    """``slot_a.img``, ``slot_b.img`` and ``boot.json`` in one directory.

    ``on_chunk`` is called with the bytes written so far after each chunk (progress, and
    the kill tests' hook for cutting the power mid-write).
    """

    def __init__(self, directory: Path, *, durable: bool = True, on_chunk: Callable[[int], None] | None = None) -> None:
        self.directory = directory
        self._durable = durable
        self._state_path = directory / "boot.json"
        self._state_temp = single_writer_temp(self._state_path)
        self._on_chunk = on_chunk
        self._lock = threading.Lock()  # one boot-state write at a time: its temp file has one name

    @classmethod
    def open_or_seed(
        cls,
        directory: Path,
        hardware_id: str,
        version: str,
        *,
        durable: bool = True,
        on_chunk: Callable[[int], None] | None = None,
    ) -> FileSlots:
        """Open existing slots, or create them with the installed version's image in slot a."""
        slots = cls(directory, durable=durable, on_chunk=on_chunk)
        if not slots._state_path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            write_atomically(directory / "slot_a.img", _seed_image(hardware_id, version), durable=durable)
            write_atomically(directory / "slot_b.img", b"", durable=durable)
            slots._save(BootState())
        return slots

    def _load(self) -> BootState:
        try:
            raw = json.loads(self._state_path.read_bytes())
            state = BootState(str(raw["active"]), str(raw["booted"]), raw.get("try_slot"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"boot state unreadable: {exc}") from exc
        if state.active not in SLOTS or state.booted not in SLOTS or state.try_slot not in (*SLOTS, None):
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"boot state invalid: {state}")
        return state

    def _save(self, state: BootState) -> None:
        data = json.dumps({"active": state.active, "booted": state.booted, "try_slot": state.try_slot}).encode()
        with self._lock:
            write_atomically(self._state_path, data, durable=self._durable, temp=self._state_temp)

    def _slot_path(self, slot: str) -> Path:
        return self.directory / f"slot_{slot}.img"

    def _write(self, slot: str, image: IO[bytes]) -> None:
        written = 0
        with self._slot_path(slot).open("wb") as out:
            while chunk := image.read(CHUNK):
                out.write(chunk)
                written += len(chunk)
                if self._on_chunk is not None:
                    self._on_chunk(written)
            out.flush()
            if self._durable:
                os.fsync(out.fileno())

    def _reader(self, slot: str) -> IO[bytes]:
        return self._slot_path(slot).open("rb")

    def slot_fingerprint(self, slot: str) -> Hashable | None:
        """The slot file's identity, size and change times: any write or replacement changes them."""
        try:
            st = self._slot_path(slot).stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=16)
def _seed_image(hardware_id: str, version: str) -> bytes:
    """The installed version's stand-in image (a simulated fleet seeds thousands of identical ones)."""
    return sample_image(hardware_id, version)


class MemorySlots(ABSlots):
    """The same A/B machine in memory (the simulator's hardware)."""

    def __init__(self, image: bytes) -> None:
        self.images: dict[str, bytes] = {"a": image, "b": b""}
        self.state = BootState()
        self._generation = 0

    @classmethod
    def seeded(cls, hardware_id: str, version: str) -> MemorySlots:
        return cls(sample_image(hardware_id, version))

    def _load(self) -> BootState:
        return self.state

    def _save(self, state: BootState) -> None:
        self.state = state

    def _write(self, slot: str, image: IO[bytes]) -> None:
        self.images[slot] = image.read()
        self._generation += 1

    def _reader(self, slot: str) -> IO[bytes]:
        return io.BytesIO(self.images[slot])

    def slot_fingerprint(self, slot: str) -> Hashable | None:
        """The write count and the image object itself (also catches a test replacing ``images``)."""
        image = self.images[slot]
        return (self._generation, id(image), len(image))


@contextmanager
def _bundle(path: Path) -> Iterator[tuple[Manifest, IO[bytes]]]:
    try:
        with path.open("rb") as fh, open_bundle(fh) as opened:
            yield opened
    except InvalidBundle as exc:
        raise UpdateFailed(FailureReason.BUNDLE_INVALID, f"{path.name}: {exc}") from exc


def _check_manifest(manifest: Manifest, assignment: Assignment) -> None:
    for key in ("hardware_id", "version", "release_counter"):
        if getattr(manifest, key) != getattr(assignment, key):
            raise UpdateFailed(
                FailureReason.BUNDLE_INVALID,
                f"{assignment.path}: manifest {key} {getattr(manifest, key)!r}, signed {getattr(assignment, key)!r}",
            )


def check_bundle(path: Path, assignment: Assignment) -> Manifest:
    """The verifying step: the manifest matches the assignment and the image its manifest hash."""
    with _bundle(path) as (manifest, image):
        _check_manifest(manifest, assignment)
        digest = hashlib.sha256()
        while chunk := image.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != manifest.image_sha256:
        raise UpdateFailed(FailureReason.BUNDLE_INVALID, f"{assignment.path}: image differs from its manifest hash")
    return manifest


def install(path: Path, assignment: Assignment, slots: SlotBackend) -> str:
    """The installing step: write the spare slot, read it back, arm a one-shot try; return the slot."""
    slot = slots.inactive_slot()
    with _bundle(path) as (manifest, image):
        _check_manifest(manifest, assignment)
        try:
            slots.write_image(slot, image)
        except OSError as exc:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"writing slot {slot}: {exc}") from exc
    if slots.slot_sha256(slot) != manifest.image_sha256:
        raise UpdateFailed(FailureReason.INSTALL_FAILED, f"slot {slot} does not read back as the manifest's image")
    slots.set_try(slot)
    return slot


def install_image(path: Path, assignment: Assignment, slots: SlotBackend) -> str:
    """Install a bare image (rebuilt from a delta) the way :func:`install` installs a bundle.

    The signed ``image_sha256`` takes the place of the manifest's hash for the read-back.
    """
    if assignment.image_sha256 is None:
        raise UpdateFailed(FailureReason.INSTALL_FAILED, f"{assignment.path}: no signed image hash to install against")
    slot = slots.inactive_slot()
    try:
        with path.open("rb") as image:
            slots.write_image(slot, image)
    except OSError as exc:
        raise UpdateFailed(FailureReason.INSTALL_FAILED, f"writing slot {slot}: {exc}") from exc
    if slots.slot_sha256(slot) != assignment.image_sha256:
        raise UpdateFailed(FailureReason.INSTALL_FAILED, f"slot {slot} does not read back as the signed image")
    slots.set_try(slot)
    return slot
