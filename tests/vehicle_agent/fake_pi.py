"""A fake Raspberry Pi boot firmware over a directory, behaving like the real one's tryboot A/B.

``autoboot.txt`` is read the way the firmware reads it: ``[all]`` names the partition of
a normal boot; after ``reboot '0 tryboot'`` the ``[tryboot]`` section applies for that
ONE boot. A partition whose image does not boot (a kernel panic, modelled by its
version being in ``unbootable``) trips the watchdog: the reset is a normal boot, so the
firmware falls back to ``[all]``. Each boot leaves the device-tree properties and a new
kernel boot id where the agent's backend reads them.
"""

from __future__ import annotations

import configparser
import uuid
from pathlib import Path

from firmware_bundles.bundle import image_header
from vehicle_agent.config import PiSlot, TrybootOptions

PARTITIONS = {"a": 2, "b": 3}


class Bricked(Exception):
    """A normal boot found nothing bootable: what the A/B scheme must never allow."""


class FakePi:
    def __init__(self, root: Path, image: bytes, *, partition_size: int = 256 * 1024) -> None:
        self.root = root
        self.autoboot = root / "autoboot" / "autoboot.txt"
        self.node = root / "proc" / "device-tree" / "chosen" / "bootloader"
        self.boot_id_path = root / "proc" / "boot_id"
        self.devices = {n: root / "dev" / f"mmcblk0p{n}" for n in PARTITIONS.values()}
        self.unbootable: set[str] = set()
        self.boots: list[tuple[int, bool]] = []  # (partition booted, was a try boot)
        for path in (self.autoboot, self.node / "partition", self.boot_id_path, *self.devices.values()):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.autoboot.write_text("[all]\ntryboot_a_b=1\nboot_partition=2\n")
        for device in self.devices.values():
            device.write_bytes(bytes(partition_size))
        with self.devices[2].open("r+b") as fh:
            fh.write(image)
        self.power_cycle(tryboot=False)

    def options(self) -> TrybootOptions:
        return TrybootOptions(
            autoboot_txt=self.autoboot,
            bootloader_node=self.node,
            boot_id=self.boot_id_path,
            slot_a=PiSlot(2, self.devices[2]),
            slot_b=PiSlot(3, self.devices[3]),
        )

    def _config(self) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(self.autoboot.read_text())
        return parser

    def _bootable(self, partition: int) -> bool:
        with self.devices[partition].open("rb") as fh:
            header = image_header(fh.read(4096))
        return header is not None and header["version"] not in self.unbootable

    def power_cycle(self, tryboot: bool) -> None:
        """Reset the board; ``tryboot`` is the one-shot flag ``reboot '0 tryboot'`` sets."""
        config = self._config()
        partition = config.getint("all", "boot_partition")
        if tryboot and config.has_option("tryboot", "boot_partition"):
            partition = config.getint("tryboot", "boot_partition")
        if not self._bootable(partition):
            if not tryboot:
                raise Bricked(f"partition {partition} does not boot")
            self.boots.append((partition, True))
            self.power_cycle(tryboot=False)  # the watchdog resets; the one-shot flag is gone
            return
        (self.node / "partition").write_bytes(partition.to_bytes(4, "big"))
        (self.node / "tryboot").write_bytes(int(tryboot).to_bytes(4, "big"))
        self.boot_id_path.write_text(str(uuid.uuid4()) + "\n")
        self.boots.append((partition, tryboot))

    def committed_partition(self) -> int:
        return self._config().getint("all", "boot_partition")

    def booted_partition(self) -> int:
        return int.from_bytes((self.node / "partition").read_bytes(), "big")


class FakeRebooter:
    """``reboot`` power-cycles the fake board and returns, as if the agent started again."""

    def __init__(self, pi: FakePi) -> None:
        self.pi = pi
        self.calls: list[bool] = []

    def reboot(self, *, tryboot: bool) -> None:
        self.calls.append(tryboot)
        self.pi.power_cycle(tryboot)
