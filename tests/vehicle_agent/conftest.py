from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from firmware_bundles.messages import ReportState
from vehicle_agent.agent import Agent
from vehicle_agent.config import AgentConfig
from vehicle_agent.installer import FileSlots
from vehicle_agent.link import FakeLink

from .fakes import HW, OLD, SERIAL, VIN, FakeServer


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


class SimTime:
    """Simulated time: every sleep (the agent's or the fetcher's) moves the monotonic clock on at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def pass_(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.pass_(seconds)


class Car:
    """One agent under test, rebuilt from the same state directory to simulate a restart."""

    def __init__(self, server: FakeServer, state_dir: Path) -> None:
        self.server = server
        self.state_dir = state_dir
        self.link = FakeLink(VIN)
        self.time = SimTime()  # kept across restarts
        self.agent = self.build()

    def build(self, *, config: AgentConfig | None = None, **kwargs: Any) -> Agent:
        """A fresh agent over the same state directory; ``config`` replaces the server's usual one."""
        self.link = FakeLink(VIN)
        kwargs.setdefault("download_sleep", self.time.pass_)  # the fetcher's backoff, in simulated time
        kwargs.setdefault("sleep", self.time.sleep)
        kwargs.setdefault("monotonic", self.time.monotonic)
        kwargs.setdefault("transport", self.server.transport)
        self.agent = Agent(config or self.server.agent_config(self.state_dir), link=self.link, **kwargs)
        return self.agent

    @property
    def slots(self) -> FileSlots:
        slots = self.agent.slots[SERIAL]
        assert isinstance(slots, FileSlots)
        return slots

    @property
    def states(self) -> list[ReportState]:
        return [r.state for r in self.link.reports]

    def running_version(self) -> str | None:
        header = self.slots.read_header()
        return header["version"] if header else None

    def assert_untouched(self, version: str = OLD, *, spare: bytes | None = b"") -> None:
        """The old software still runs, committed, and nothing is armed to boot."""
        assert self.slots.booted_slot() == self.slots.active_slot()
        assert self.slots.pending_try() is None
        assert self.slots.read_header() == {"hardware_id": HW, "version": version}
        assert self.agent.journal.data.installed[SERIAL][0] == version
        if spare is not None:
            spare_slot = "b" if self.slots.active_slot() == "a" else "a"
            assert (self.slots.directory / f"slot_{spare_slot}.img").read_bytes() == spare
        downloads = self.state_dir / "downloads"
        assert not downloads.exists() or not any(downloads.iterdir()), "no bundle or partial file is left"


@pytest.fixture
def car(server: FakeServer, tmp_path: Path) -> Car:
    return Car(server, tmp_path / "car")
