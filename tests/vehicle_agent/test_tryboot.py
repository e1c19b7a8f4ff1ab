"""The Raspberry Pi backend against a fake firmware that does tryboot A/B like the real one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from firmware_bundles.bundle import sample_image
from firmware_bundles.messages import FailureReason, ReportState
from firmware_bundles.uptane import Assignment
from vehicle_agent.config import EcuConfig, InstallerOptions, load_config, write_config
from vehicle_agent.errors import ConfigError, UpdateFailed
from vehicle_agent.installer import FileSlots, SlotBackend
from vehicle_agent.tryboot import CommandRebooter, DeviceTreeBootInfo, TrybootSlots, parse_autoboot, slot_factory

from .conftest import Car
from .fake_pi import FakePi, FakeRebooter
from .fakes import HW, OLD, SERIAL, FakeServer

S = ReportState


@pytest.fixture
def pi(tmp_path: Path) -> FakePi:
    return FakePi(tmp_path / "pi", sample_image(HW, OLD))


def pi_slots(pi: FakePi, state_dir: Path) -> TrybootSlots:
    o = pi.options()
    return TrybootSlots(
        o.autoboot_txt,
        {"a": o.slot_a, "b": o.slot_b},
        state_dir,
        boot_info=DeviceTreeBootInfo(o.bootloader_node, o.boot_id),
        rebooter=FakeRebooter(pi),
    )


@pytest.fixture
def slots(pi: FakePi, tmp_path: Path) -> TrybootSlots:
    return pi_slots(pi, tmp_path / "slot-state")


def on_pi(car: Car, pi: FakePi, **kwargs: Any) -> TrybootSlots:
    car.build(slots={SERIAL: pi_slots(pi, car.state_dir / "slots" / SERIAL)}, **kwargs)
    backend = car.agent.slots[SERIAL]
    assert isinstance(backend, TrybootSlots)
    return backend


def new_image(version: str = "2.0") -> io.BytesIO:
    return io.BytesIO(sample_image(HW, version))


# -- the backend on its own -------------------------------------------------------------


def test_a_try_boots_once_then_the_firmware_falls_back(pi: FakePi, slots: TrybootSlots) -> None:
    slots.write_image("b", new_image())
    slots.set_try("b")
    assert slots.pending_try() == "b"
    slots.reboot()
    assert pi.boots[-1] == (3, True)
    assert (slots.booted_slot(), slots.active_slot()) == ("b", "a")
    assert slots.read_header() == {"hardware_id": HW, "version": "2.0"}
    pi.power_cycle(tryboot=False)  # e.g. the health check never committed and the watchdog fired
    assert (slots.booted_slot(), slots.pending_try()) == ("a", None)


def test_commit_rewrites_autoboot_so_normal_boots_stay_on_the_new_slot(pi: FakePi, slots: TrybootSlots) -> None:
    slots.write_image("b", new_image())
    slots.set_try("b")
    slots.reboot()
    slots.commit()
    assert parse_autoboot(pi.autoboot.read_text()) == {
        "all": {"tryboot_a_b": "1", "boot_partition": "3"},
        "tryboot": {"boot_partition": "2"},
    }
    pi.power_cycle(tryboot=False)
    assert slots.booted_slot() == slots.active_slot() == "b"
    assert slots.inactive_slot() == "a"


def test_a_power_cut_between_arming_and_rebooting_spends_the_try(pi: FakePi, slots: TrybootSlots) -> None:
    slots.write_image("b", new_image())
    slots.set_try("b")
    pi.power_cycle(tryboot=False)
    assert slots.pending_try() is None
    assert slots.booted_slot() == "a"


def test_the_running_and_committed_slots_are_never_written(pi: FakePi, slots: TrybootSlots) -> None:
    with pytest.raises(UpdateFailed, match="in use"):
        slots.write_image("a", io.BytesIO(b"x"))
    slots.write_image("b", new_image())
    slots.set_try("b")
    slots.reboot()
    with pytest.raises(UpdateFailed, match="trial boot"):
        slots.inactive_slot()
    for slot in ("a", "b"):
        with pytest.raises(UpdateFailed, match="in use"):
            slots.write_image(slot, io.BytesIO(b"x"))
    assert pi.devices[2].read_bytes().startswith(sample_image(HW, OLD))


def test_a_half_written_slot_never_verifies_and_is_disarmed(slots: TrybootSlots) -> None:
    image = sample_image(HW, "2.0")
    slots.write_image("b", io.BytesIO(image))
    import hashlib

    assert slots.slot_sha256("b") == hashlib.sha256(image).hexdigest()  # the image, not the whole partition
    assert slots.measure_slot("b") == (hashlib.sha256(image).hexdigest(), len(image))  # the manifest's measure
    slots.set_try("b")

    class PowerCut(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("power lost")

    with pytest.raises(OSError):
        slots.write_image("b", PowerCut())
    assert slots.pending_try() is None
    with pytest.raises(UpdateFailed, match="no completely written image"):
        slots.slot_sha256("b")


def test_command_rebooter_runs_the_tryboot_command_and_waits_to_be_stopped() -> None:
    ran: list[list[str]] = []
    waited: list[float] = []

    def run(argv: list[str]) -> int:
        ran.append(argv)
        return 0

    rebooter = CommandRebooter(["reboot", "0 tryboot"], ["reboot"], wait=300, run=run, sleep=waited.append)
    with pytest.raises(UpdateFailed, match="still running"):
        rebooter.reboot(tryboot=True)
    assert ran == [["reboot", "0 tryboot"]]
    assert waited == [300]
    failing = CommandRebooter(["reboot", "0 tryboot"], ["reboot"], run=lambda argv: 1, sleep=waited.append)
    with pytest.raises(UpdateFailed, match="exited 1") as raised:
        failing.reboot(tryboot=False)
    assert raised.value.reason is FailureReason.BOOT_FAILED


# -- the agent on a Pi --------------------------------------------------------------------


async def test_agent_on_a_pi_tries_checks_and_commits(car: Car, server: FakeServer, pi: FakePi) -> None:
    slots = on_pi(car, pi)
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice()) is S.REMEDIED
    assert pi.boots == [(2, False), (3, True)]
    assert pi.committed_partition() == 3
    pi.power_cycle(tryboot=False)
    assert slots.read_header() == {"hardware_id": HW, "version": "2.0"}
    assert car.agent.journal.data.installed[SERIAL] == ("2.0", 2)


async def test_an_image_that_does_not_boot_falls_back_and_reports_boot_failed(
    car: Car, server: FakeServer, pi: FakePi
) -> None:
    slots = on_pi(car, pi)
    pi.unbootable.add("2.0")
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice()) is S.ROLLED_BACK
    last = car.link.reports[-1]
    assert last.reason is FailureReason.BOOT_FAILED
    assert "fell back to slot a" in last.detail and "rolled back" in last.detail
    assert last.detail.startswith(f"ECU {SERIAL}: ")  # which ECU did not boot (a car may have several)
    assert pi.boots == [(2, False), (3, True), (2, False)]
    assert pi.committed_partition() == 2
    assert slots.booted_slot() == slots.active_slot() == "a"


async def test_a_failed_health_check_reboots_into_the_committed_slot(car: Car, server: FakeServer, pi: FakePi) -> None:
    class Unhealthy:
        def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
            return "brake controller silent"

    slots = on_pi(car, pi, health=Unhealthy())
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice()) is S.ROLLED_BACK
    last = car.link.reports[-1]
    assert (last.reason, last.health_ok) == (FailureReason.HEALTH_CHECK_FAILED, False)
    assert "brake controller silent" in last.detail and "rolled back to slot a" in last.detail
    assert pi.boots[-1] == (2, False)
    assert slots.booted_slot() == slots.active_slot() == "a"
    assert slots.read_header() == {"hardware_id": HW, "version": OLD}


# -- configuration ------------------------------------------------------------------------


def test_installer_table_selects_the_pi_backend(server: FakeServer, pi: FakePi, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    write_config(server.agent_config(tmp_path / "state"), path)
    o = pi.options()
    path.write_text(
        path.read_text()
        + f"""
[installer]
backend = "rpi-tryboot"
max_boot_attempts = 2

[installer.tryboot]
autoboot_txt = "{o.autoboot_txt}"
bootloader_node = "{o.bootloader_node}"
boot_id = "{o.boot_id}"
tryboot_command = ["reboot", "0 tryboot"]
slot_a = {{ boot_partition = 2, device = "{o.slot_a.device}" }}
slot_b = {{ boot_partition = 3, device = "{o.slot_b.device}" }}
"""
    )
    config = load_config(path)
    assert config.installer.max_boot_attempts == 2
    assert config.installer.tryboot == o
    make = slot_factory(config)
    assert make is not None
    backend = make(EcuConfig(SERIAL, HW, OLD))
    assert isinstance(backend, TrybootSlots)
    assert backend.booted_slot() == backend.active_slot() == "a"
    assert isinstance(make(EcuConfig("ECU-OTHER", HW, OLD)), FileSlots)
    assert slot_factory(server.agent_config(tmp_path)) is None  # file slots by default

    path.write_text(path.read_text().replace('backend = "rpi-tryboot"', 'backend = "grub"'))
    with pytest.raises(ConfigError, match="backend must be"):
        load_config(path)
    assert InstallerOptions().backend == "file"
