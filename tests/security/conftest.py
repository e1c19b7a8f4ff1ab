"""Fixtures of the attack suite: the agent tests' fake repositories and car, rebuilt here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vehicle_agent.conftest import Car
from tests.vehicle_agent.fakes import FakeServer


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def car(server: FakeServer, tmp_path: Path) -> Car:
    return Car(server, tmp_path / "car")
