"""The A/B slot machine: one-shot try, fallback, commit, and never writing a slot in use."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from firmware_bundles.bundle import sample_image
from firmware_bundles.uptane import Assignment
from vehicle_agent.errors import UpdateFailed
from vehicle_agent.health import CommandHealthCheck
from vehicle_agent.installer import ABSlots, FileSlots, MemorySlots


@pytest.fixture(params=["file", "memory"])
def slots(request: pytest.FixtureRequest, tmp_path: Path) -> ABSlots:
    if request.param == "file":
        return FileSlots.open_or_seed(tmp_path / "slots", "hw", "1.0")
    return MemorySlots.seeded("hw", "1.0")


def test_an_uncommitted_try_falls_back_on_the_next_reboot(slots: ABSlots) -> None:
    slots.write_image("b", io.BytesIO(sample_image("hw", "2.0")))
    slots.set_try("b")
    slots.reboot()
    assert slots.booted_slot() == "b"
    assert slots.read_header() == {"hardware_id": "hw", "version": "2.0"}
    slots.reboot()
    assert slots.booted_slot() == slots.active_slot() == "a"


def test_commit_makes_the_tried_slot_active(slots: ABSlots) -> None:
    slots.write_image(slots.inactive_slot(), io.BytesIO(sample_image("hw", "2.0")))
    slots.set_try("b")
    slots.reboot()
    slots.commit()
    slots.reboot()
    assert slots.booted_slot() == slots.active_slot() == "b"
    assert slots.inactive_slot() == "a"


def test_slots_in_use_are_never_written(slots: ABSlots) -> None:
    with pytest.raises(UpdateFailed, match="in use"):
        slots.write_image("a", io.BytesIO(b"x"))
    slots.write_image("b", io.BytesIO(sample_image("hw", "2.0")))
    slots.set_try("b")
    slots.reboot()  # trial boot of b: a is active, b is running; no spare slot
    with pytest.raises(UpdateFailed, match="trial boot"):
        slots.inactive_slot()
    for slot in ("a", "b"):
        with pytest.raises(UpdateFailed):
            slots.write_image(slot, io.BytesIO(b"x"))
    assert slots.read_header("a") == {"hardware_id": "hw", "version": "1.0"}


def test_rewriting_a_tried_slot_disarms_the_try(slots: ABSlots) -> None:
    slots.write_image("b", io.BytesIO(sample_image("hw", "2.0")))
    slots.set_try("b")
    slots.write_image("b", io.BytesIO(b"half"))
    assert slots.pending_try() is None
    slots.reboot()
    assert slots.booted_slot() == "a"


def test_command_health_check_trusts_the_exit_code(slots: ABSlots) -> None:
    expected = Assignment("p", "s", "hw", "1.0", 1, 1, "0" * 64)
    assert CommandHealthCheck(["true"], timeout=30).check(slots, expected) is None
    problem = CommandHealthCheck(["sh", "-c", "echo sick >&2; exit 3", "check"], timeout=30).check(slots, expected)
    assert problem is not None
    assert "exited 3" in problem
    assert "sick" in problem
