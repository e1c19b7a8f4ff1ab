"""The Raspberry Pi backend: A/B slots on the Pi firmware's one-shot ``tryboot``.

How the firmware behaves (and what :class:`TrybootSlots` relies on): the first FAT
partition holds ``autoboot.txt``::

    [all]
    tryboot_a_b=1
    boot_partition=2
    [tryboot]
    boot_partition=3

A normal boot uses ``[all]``'s partition. ``reboot '0 tryboot'`` sets a one-shot flag:
the next boot applies the ``[tryboot]`` section, and the flag is gone after that boot,
so any later reset (a panic, the watchdog, a power cut) boots ``[all]`` again. Committing
is rewriting ``autoboot.txt`` so ``[all]`` names the new partition. The firmware tells
the running system what it booted in the device tree (``chosen/bootloader/partition``
and ``tryboot``, big-endian 32-bit).

A try is "armed" while the boot that armed it is still running: the marker file holds
the kernel's boot id at arming time, so it is spent by any reboot without our writing
anything (a power cut between arming and rebooting cannot leave a stale try behind).

The machine-facing parts (where the device tree is, how to reboot) sit behind two small
Protocols so the suite runs the backend against a fake bootloader.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from firmware_bundles.bundle import image_header
from firmware_bundles.messages import FailureReason
from vehicle_agent.config import AgentConfig, EcuConfig, InstallerOptions, PiSlot, TrybootOptions
from vehicle_agent.errors import UpdateFailed
from vehicle_agent.installer import CHUNK, HEADER_BYTES, SLOTS, FileSlots, SlotBackend
from vehicle_agent.journal import write_atomically

SlotFactory = Callable[[EcuConfig], SlotBackend]


class BootInfo(Protocol):
    def booted_partition(self) -> int:
        """The partition number the firmware booted."""
        ...

    def boot_id(self) -> str:
        """Changes on every boot."""
        ...


class Rebooter(Protocol):
    def reboot(self, *, tryboot: bool) -> None:
        """Restart the machine, once into the ``[tryboot]`` partition if asked.

        On a real Pi this does not return (the agent is stopped by the shutdown). A fake
        returns after the simulated boot, as if the agent had been started again.
        """
        ...


class DeviceTreeBootInfo:
    """Reads what the Pi firmware left in the device tree and the kernel's boot id."""

    def __init__(self, bootloader_node: Path, boot_id: Path) -> None:
        self._node = bootloader_node
        self._boot_id = boot_id

    def booted_partition(self) -> int:
        try:
            return int.from_bytes((self._node / "partition").read_bytes()[:4], "big")
        except OSError as exc:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"cannot tell the booted partition: {exc}") from exc

    def boot_id(self) -> str:
        return self._boot_id.read_text().strip()


class CommandRebooter:
    """Runs the configured reboot command, then waits to be stopped by the shutdown."""

    def __init__(
        self,
        tryboot_command: Sequence[str],
        reboot_command: Sequence[str],
        *,
        wait: float = 300.0,
        run: Callable[[list[str]], int] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._commands = {True: list(tryboot_command), False: list(reboot_command)}
        self._wait = wait
        self._run = run or _run_command
        self._sleep = sleep

    def reboot(self, *, tryboot: bool) -> None:
        argv = self._commands[tryboot]
        status = self._run(argv)
        if status != 0:
            raise UpdateFailed(FailureReason.BOOT_FAILED, f"reboot command {argv} exited {status}")
        self._sleep(self._wait)
        raise UpdateFailed(FailureReason.BOOT_FAILED, f"still running {self._wait:g} s after {argv}")


def _run_command(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, check=False, timeout=60).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateFailed(FailureReason.BOOT_FAILED, f"reboot command {argv} failed: {exc}") from exc


def parse_autoboot(text: str) -> dict[str, dict[str, str]]:
    """``autoboot.txt`` as the firmware reads it: ``[section]`` headers and ``key=value`` lines."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("all", {})
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif "=" in line:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip()
    return sections


def render_autoboot(boot_partition: int, try_partition: int) -> str:
    return f"[all]\ntryboot_a_b=1\nboot_partition={boot_partition}\n[tryboot]\nboot_partition={try_partition}\n"


class TrybootSlots:
    """A :class:`~vehicle_agent.installer.SlotBackend` on the Pi firmware's tryboot A/B.

    ``state_dir`` (on the data partition) keeps the try marker and the length of each
    written image: a slot is a partition larger than its image, and its hash is the
    hash of the image's bytes only.
    """

    def __init__(
        self,
        autoboot: Path,
        slots: Mapping[str, PiSlot],
        state_dir: Path,
        *,
        boot_info: BootInfo,
        rebooter: Rebooter,
        durable: bool = True,
    ) -> None:
        if set(slots) != set(SLOTS):
            raise ValueError(f"need slots {SLOTS}, got {sorted(slots)}")
        self.autoboot = autoboot
        self.slots = dict(slots)
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state_path = state_dir / "tryboot.json"
        self._boot_info = boot_info
        self._rebooter = rebooter
        self._durable = durable

    @classmethod
    def from_options(cls, options: TrybootOptions, state_dir: Path, *, durable: bool = True) -> TrybootSlots:
        return cls(
            options.autoboot_txt,
            {"a": options.slot_a, "b": options.slot_b},
            state_dir,
            boot_info=DeviceTreeBootInfo(options.bootloader_node, options.boot_id),
            rebooter=CommandRebooter(options.tryboot_command, options.reboot_command, wait=options.reboot_wait),
            durable=durable,
        )

    # -- what the firmware and our marker say -------------------------------------------

    def _slot_of(self, partition: int, what: str) -> str:
        for slot, pi_slot in self.slots.items():
            if pi_slot.boot_partition == partition:
                return slot
        raise UpdateFailed(FailureReason.INSTALL_FAILED, f"{what} partition {partition} is not a configured slot")

    def _load(self) -> dict[str, object]:
        try:
            state = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return {"try": None, "lengths": {}}
        except ValueError as exc:  # torn by the storage: forget the try and the lengths (re-verified anyway)
            return {"try": None, "lengths": {}, "unreadable": str(exc)}
        return state if isinstance(state, dict) else {"try": None, "lengths": {}}

    def _save(self, state: Mapping[str, object]) -> None:
        write_atomically(self._state_path, json.dumps(state).encode(), durable=self._durable)

    def _lengths(self) -> dict[str, int]:
        lengths = self._load().get("lengths")
        return {str(k): int(v) for k, v in lengths.items()} if isinstance(lengths, dict) else {}

    def booted_slot(self) -> str:
        return self._slot_of(self._boot_info.booted_partition(), "booted")

    def active_slot(self) -> str:
        try:
            section = parse_autoboot(self.autoboot.read_text())["all"]
            partition = int(section["boot_partition"])
        except (OSError, KeyError, ValueError) as exc:
            raise UpdateFailed(
                FailureReason.INSTALL_FAILED, f"{self.autoboot}: no usable [all] boot_partition"
            ) from exc
        return self._slot_of(partition, "committed")

    def pending_try(self) -> str | None:
        armed = self._load().get("try")
        if not isinstance(armed, dict) or armed.get("boot_id") != self._boot_info.boot_id():
            return None  # never armed, or spent by a reboot since
        slot = armed.get("slot")
        return slot if slot in SLOTS else None

    def inactive_slot(self) -> str:
        active, booted = self.active_slot(), self.booted_slot()
        if booted != active:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, "a trial boot is in progress; no spare slot")
        return _other(active)

    # -- writing and reading the partitions -------------------------------------------------

    def write_image(self, slot: str, image: IO[bytes]) -> None:
        if slot not in SLOTS or slot in (self.active_slot(), self.booted_slot()):
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"refusing to write slot {slot!r}: it is in use")
        state = self._load()
        lengths = self._lengths()
        lengths.pop(slot, None)  # a half-written slot has no length, so it never verifies
        armed = state.get("try")
        self._save(
            {"try": None if isinstance(armed, dict) and armed.get("slot") == slot else armed, "lengths": lengths}
        )
        written = self._copy(self.slots[slot].device, image)
        self._save({**self._load(), "lengths": {**lengths, slot: written}})

    def _copy(self, device: Path, image: IO[bytes]) -> int:
        # No O_CREAT and no O_TRUNC: the partition exists and is bigger than the image.
        fd = os.open(device, os.O_WRONLY)
        written = 0
        try:
            while chunk := image.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                written += len(chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        return written

    def slot_sha256(self, slot: str) -> str:
        length = self._lengths().get(slot)
        if length is None:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"slot {slot} holds no completely written image")
        digest = hashlib.sha256()
        with self.slots[slot].device.open("rb") as fh:
            left = length
            while left and (chunk := fh.read(min(CHUNK, left))):
                digest.update(chunk)
                left -= len(chunk)
        if left:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"slot {slot} is shorter than its image")
        return digest.hexdigest()

    def measure_slot(self, slot: str) -> tuple[str, int]:
        """The sha256 and length of the image written to ``slot`` (the version manifest's measure).

        No fingerprint: a partition's stat does not change with its bytes, so it is hashed each time.
        """
        return self.slot_sha256(slot), self._lengths()[slot]

    def read_header(self, slot: str | None = None) -> dict[str, str] | None:
        with self.slots[slot or self.booted_slot()].device.open("rb") as fh:
            return image_header(fh.read(HEADER_BYTES))

    # -- switching ---------------------------------------------------------------------

    def set_try(self, slot: str) -> None:
        active = self.active_slot()
        if slot == active:
            raise UpdateFailed(FailureReason.INSTALL_FAILED, f"slot {slot} is already the active slot")
        self._write_autoboot(active, slot)
        self._save({**self._load(), "try": {"slot": slot, "boot_id": self._boot_info.boot_id()}})

    def reboot(self) -> None:
        self._rebooter.reboot(tryboot=self.pending_try() is not None)

    def commit(self) -> None:
        booted = self.booted_slot()
        self._write_autoboot(booted, _other(booted))
        self._save({**self._load(), "try": None})

    def rollback(self) -> None:
        """Disarm any try; if running a trial boot, reboot normally into the committed slot."""
        self._save({**self._load(), "try": None})
        if self.booted_slot() != self.active_slot():
            self._rebooter.reboot(tryboot=False)

    def _write_autoboot(self, boot: str, try_: str) -> None:
        text = render_autoboot(self.slots[boot].boot_partition, self.slots[try_].boot_partition)
        write_atomically(self.autoboot, text.encode(), durable=self._durable)

    def describe(self) -> dict[str, object]:
        return {
            "backend": "rpi-tryboot",
            "active": self.active_slot(),
            "booted": self.booted_slot(),
            "try_slot": self.pending_try(),
            "headers": {slot: self.read_header(slot) for slot in SLOTS},
        }


def _other(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


def slot_factory(config: AgentConfig) -> SlotFactory | None:
    """The slots ``config.installer`` asks for; ``None`` means the agent's default (file slots)."""
    options: InstallerOptions = config.installer
    if options.backend == "file":
        return None
    pi_ecu = options.ecu or config.ecus[0].serial

    def make(ecu: EcuConfig) -> SlotBackend:
        directory = config.state_dir / "slots" / ecu.serial
        if ecu.serial == pi_ecu:
            return TrybootSlots.from_options(options.tryboot, directory, durable=config.durable)
        return FileSlots.open_or_seed(directory, ecu.hardware_id, ecu.installed_version, durable=config.durable)

    return make
