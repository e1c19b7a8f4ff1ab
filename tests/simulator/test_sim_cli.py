"""`ota-sim` with worker processes and the load-run fault flags, as a process against a running server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from simulator.server_process import ServerProcess


def test_ota_sim_runs_its_cars_in_worker_processes_with_faults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    server = ServerProcess(tmp_path / "server", env=env)
    with server as endpoints:
        command = [
            sys.executable,
            "-m",
            "simulator.cli",
            "--server",
            endpoints.api_url,
            "--token",
            server.admin_token(),
        ]
        command += ["--cars", "8", "--workers", "2", "--json", "--state-dir", str(tmp_path / "cars"), "--seed", "2"]
        command += ["--power-cut-rate", "0.25", "--late-rate", "0.25", "--late-seconds", "1"]
        command += ["--slow-rate", "0.25", "--mqtt-url", endpoints.mqtt_url]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["cars"], summary["remedied"], summary["failed"]) == (8, 8, 0)
    assert "cars connected" in result.stderr  # the workers' live bars
    assert not (tmp_path / "cars").exists() or not any((tmp_path / "cars").rglob("journal.json"))  # cleaned up
