"""`ota demo` where the simulator is not installed (the ota-server wheel, its Docker image)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from ota_server.cli.main import app


def test_demo_without_the_simulator_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "simulator.demo", None)  # as if the package were absent
    result = CliRunner().invoke(app, ["demo", "--cars", "1"])
    assert result.exit_code == 2
    assert "ota demo needs the simulator" in result.output
    assert "Traceback" not in result.output
