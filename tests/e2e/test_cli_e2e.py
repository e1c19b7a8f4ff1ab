"""The README's commands from the outside: `vehicle-agent init/run` and `ota-sim` as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from simulator.fleet import make_fleet
from simulator.progress import watch_campaign
from simulator.scenario import ScenarioOptions, file_recall, launch_recall, register_fleet, upload_fix
from tests.e2e.conftest import Stack


def test_one_real_agent_process_is_remedied(embedded_stack: Stack, tmp_path: Path) -> None:
    client = embedded_stack.client
    fleet = make_fleet(1)
    car = fleet.cars[0]
    release = upload_fix(client, fleet, ScenarioOptions())
    register_fleet(client, fleet)
    car_dir = tmp_path / "car"
    agent_cli = [sys.executable, "-m", "vehicle_agent.cli"]
    subprocess.run(
        [*agent_cli, "init", "--server", embedded_stack.endpoints.api_url, "--vin", car.vin, "--dir", str(car_dir)],
        check=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, "OTA_TOKEN": embedded_stack.token},
    )
    agent = subprocess.Popen(
        [*agent_cli, "run", "--config", str(car_dir / "agent.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        recall = file_recall(client, fleet, release)
        campaign = launch_recall(client, recall, embedded_stack.approver)
        outcome = watch_campaign(lambda: client.progress(campaign["id"]), timeout=120, console=None)
    finally:
        agent.send_signal(signal.SIGTERM)
        output, _ = agent.communicate(timeout=30)
    assert (outcome.remedied, outcome.failed) == (1, 0), output.decode(errors="replace")
    assert agent.returncode == 0

    status = subprocess.run(
        [*agent_cli, "status", "--config", str(car_dir / "agent.toml")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "2.0.0" in status.stdout


def test_ota_sim_against_a_running_server(embedded_stack: Stack, tmp_path: Path) -> None:
    sim = [sys.executable, "-m", "simulator.cli", "--server", embedded_stack.endpoints.api_url]
    sim += ["--token", embedded_stack.token]  # an admin: ota-sim makes its approver with it
    result = subprocess.run(
        [*sim, "--cars", "6", "--json", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["cars"], summary["remedied"], summary["failed"]) == (6, 6, 0)
