"""A car with only the agent's wheels: packaging/raspberry-pi/install.sh into a fresh venv, then a real
`vehicle-agent` from that venv against `ota serve` (run from the development venv) to remedied.

The venv is built from the wheels `make agent-wheel` makes (by file) and their dependencies from the
package index (pip's cache after the first run). It records the venv's size and the agent's resident
memory, idle and during the install, in test-artifacts/agent-footprint.json (docs/bench/agent-footprint.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_bundles.bundle import build_bundle, sample_image
from simulator.fleet import make_fleet
from simulator.procstat import memory_kib
from simulator.progress import watch_campaign
from simulator.scenario import file_recall, launch_recall, register_fleet
from tests.e2e.conftest import Stack, embedded_stack

from .wheels import ROOT, SERVER_ONLY, build

__all__ = ["embedded_stack"]  # the fixture, imported so pytest finds it here

ARTIFACT = ROOT / "test-artifacts" / "agent-footprint.json"
IMAGE_BYTES = 16 * 1024 * 1024
FIX = "2.0.0"


@pytest.fixture(scope="module")
def car_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file-system root where install.sh put the agent (as on a Pi, under --root)."""
    wheels = tmp_path_factory.mktemp("dist")
    build(wheels, "ota-firmware-bundles", "ota-vehicle-agent")
    root = tmp_path_factory.mktemp("pi")
    done = subprocess.run(
        ["bash", str(ROOT / "packaging" / "raspberry-pi" / "install.sh"), "--root", str(root), "--wheels", str(wheels)],
        env={**_clean_env(), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def _clean_env() -> dict[str, str]:
    """No development paths leak into the car's venv."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def _venv(car_root: Path) -> Path:
    return car_root / "opt" / "vehicle-agent" / "venv"


def _agent(car_root: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    command = [str(_venv(car_root) / "bin" / "vehicle-agent"), *args]
    return subprocess.run(
        command, cwd=cwd, env=_clean_env() | env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_car_s_venv_holds_the_agent_and_none_of_the_server(car_root: Path, tmp_path: Path) -> None:
    python = str(_venv(car_root) / "bin" / "python")
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listed.stdout)}
    assert {"ota-vehicle-agent", "ota-firmware-bundles"} <= names
    assert not names & {*SERVER_ONLY, "ota-server", "ota-recall"}, names & {*SERVER_ONLY, "ota-server"}
    probe = (
        "import importlib.util, json, vehicle_agent; print(json.dumps([vehicle_agent.__file__, "
        "[m for m in ('ota_server', 'simulator', 'bench') if importlib.util.find_spec(m)]]))"
    )
    where = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, check=True, env=_clean_env(), cwd=tmp_path
    )
    location, server_modules = json.loads(where.stdout)
    assert Path(location).is_relative_to(_venv(car_root))  # the wheel's copy, not the checkout
    assert server_modules == []
    for command in (["init"], ["run"], ["status"], ["tuf-client"], ["consent"]):
        shown = _agent(car_root, *command, "--help", cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
    assert "--token" in _agent(car_root, "init", "--help", cwd=tmp_path).stdout
    # install.sh's car directory on the data partition, the sample config, the health check
    assert (car_root / "data" / "ota" / "state").stat().st_mode & 0o777 == 0o700
    assert (car_root / "data" / "ota" / "agent.toml").is_file()
    assert os.access(car_root / "usr" / "local" / "bin" / "ota-health-check", os.X_OK)


def test_a_real_agent_from_the_wheels_is_remedied(car_root: Path, embedded_stack: Stack, tmp_path: Path) -> None:
    client = embedded_stack.client
    fleet = make_fleet(1)
    car = fleet.cars[0]
    # a 16 MiB root image, so "busy" is a real download, verification and slot write
    image = sample_image(fleet.hardware_id, FIX, size=IMAGE_BYTES)
    release = client.upload_release(build_bundle(image, fleet.hardware_id, FIX, 2).data, fleet.hardware_id, FIX, 2)
    register_fleet(client, fleet)
    car_dir = tmp_path / "data" / "ota"
    init = _agent(
        car_root,
        *("init", "--server", embedded_stack.endpoints.api_url, "--vin", car.vin),
        *("--dir", str(car_dir), "--token", embedded_stack.token),
        cwd=tmp_path,
    )
    assert init.returncode == 0, init.stderr
    config = str(car_dir / "agent.toml")
    agent = subprocess.Popen(
        [str(_venv(car_root) / "bin" / "vehicle-agent"), "run", "--config", config],
        cwd=tmp_path,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    busy: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not client.vehicle(car.vin)["online"] and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.2)
        idle = memory_kib(agent.pid)

        def progress() -> dict[str, object]:
            busy.append(memory_kib(agent.pid)["VmRSS"])
            return client.progress(campaign["id"])

        recall = file_recall(client, fleet, release)
        campaign = launch_recall(client, recall, embedded_stack.approver)
        outcome = watch_campaign(progress, timeout=120, console=None)
        peak = memory_kib(agent.pid)["VmHWM"]
    finally:
        agent.send_signal(signal.SIGTERM)
        output, _ = agent.communicate(timeout=30)
    assert (outcome.remedied, outcome.failed) == (1, 0), output.decode(errors="replace")
    assert agent.returncode == 0
    status = _agent(car_root, "status", "--config", config, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["installed"][car.all_ecus()[0].serial]["version"] == FIX

    venv_bytes = subprocess.run(["du", "-sb", str(_venv(car_root))], capture_output=True, text=True, check=True)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(
        json.dumps(
            {
                "venv_bytes": int(venv_bytes.stdout.split()[0]),
                "idle_rss_kib": idle["VmRSS"],
                "busy_rss_max_sampled_kib": max(busy, default=0),
                "peak_rss_kib": peak,
                "image_bytes": IMAGE_BYTES,
                "bundle_bytes": release.get("length"),
                "python": sys.version.split()[0],
            },
            indent=2,
        )
        + "\n"
    )
