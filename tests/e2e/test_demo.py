"""`ota demo` from the outside: a subprocess, embedded defaults, JSON summary on the last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_remedies_every_car_and_prints_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ota_server", "demo", "--cars", "12", "--json", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["cars"] == 12
    assert summary["remedied"] == 12
    assert summary["failed"] == 0
    assert summary["seconds"] > 0
    assert "remedied" in result.stdout  # the table for people, before the JSON line
    # first run: dev keys are generated, and the demo says so where the user looks
    assert "development signing keys" in result.stderr.lower()
