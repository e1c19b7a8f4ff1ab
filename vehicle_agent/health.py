"""The health check of the booted slot: the proof that the new software runs.

The default reads the booted slot's image header (what the simulated boot sees);
on a Raspberry Pi :class:`CommandHealthCheck` runs a command and trusts its exit code.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Protocol

from firmware_bundles.assignment import Assignment
from vehicle_agent.installer import SlotBackend


class HealthCheck(Protocol):
    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        """``None`` when healthy, else what is wrong. Blocking; the agent runs it in a thread."""
        ...


class HeaderHealthCheck:
    """Healthy when the booted slot is the tried one and its header names the expected image."""

    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        header = slots.read_header()
        if header is None:
            return f"slot {slots.booted_slot()} has no image header"
        booted = (header.get("hardware_id"), header.get("version"))
        if booted != (expected.hardware_id, expected.version):
            return f"booted {booted[0]} {booted[1]}, expected {expected.hardware_id} {expected.version}"
        return None


class CommandHealthCheck:
    """Runs ``argv`` plus the expected hardware id and version; exit 0 within ``timeout`` is healthy."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self._argv = list(argv)
        self._timeout = timeout

    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        argv = [*self._argv, expected.hardware_id, expected.version]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=self._timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"health command failed to run: {exc}"
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip()[-300:]
            return f"health command exited {done.returncode}: {tail}"
        return None
