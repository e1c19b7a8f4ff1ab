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


def test_operator_commands_from_another_directory_use_OTA_SERVER(embedded_stack: Stack, tmp_path: Path) -> None:
    """`ota tokens create`, `ota reports export` and `ota vehicles provision` as processes, run where
    there is no ./var: they answer from the server and leave no database behind."""
    client = embedded_stack.client
    fleet = make_fleet(1)
    register_fleet(client, fleet)
    recall = file_recall(client, fleet, upload_fix(client, fleet, ScenarioOptions()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")}
    env |= {"OTA_SERVER": embedded_stack.endpoints.api_url, "OTA_TOKEN": embedded_stack.token}

    def ota(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ota_server", *args]
        return subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)

    made = ota("tokens", "create", "--name", "care-desk", "--role", "viewer")
    assert made.returncode == 0, made.stderr
    viewer = subprocess.run(
        [sys.executable, "-m", "ota_server", "recalls", "list", "--json"],
        cwd=elsewhere,
        env=env | {"OTA_TOKEN": made.stdout.strip()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert viewer.returncode == 0, viewer.stderr
    assert [r["id"] for r in json.loads(viewer.stdout)] == [recall["id"]]
    exported = ota("reports", "export", str(recall["id"]), "--kind", "notices", "--format", "pdf", "--out", "n.pdf")
    assert exported.returncode == 0, exported.stderr
    assert (elsewhere / "n.pdf").read_bytes().startswith(b"%PDF")  # not launched yet: no notices, a PDF all the same
    provisioned = ota("vehicles", "provision", fleet.cars[0].vin, "--out", "car", "--no-certificate")
    assert provisioned.returncode == 0, provisioned.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["car", "n.pdf"]
