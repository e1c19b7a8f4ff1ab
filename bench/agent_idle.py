"""How much a connected, idle ``vehicle-agent run`` costs a Raspberry Pi: CPU and memory.

Writes a car's ``agent.toml`` (a fresh VIN, trusted roots made with the contract
helpers; nothing is fetched while idle, so no server is needed) pointing at an MQTT
broker (default: the machine's Mosquitto), starts ``vehicle-agent run`` as a car
would, lets it connect, then measures over an idle window from ``/proc`` (Linux, as
on the Pi): CPU seconds used, resident memory now and at its peak.

    .venv/bin/python -m bench.agent_idle --json bench/out/agent_idle.json
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from firmware_bundles.uptane import RoleSigners, create_root
from firmware_bundles.vin import make_vin
from simulator.procstat import cpu_seconds, memory_kib
from vehicle_agent.config import AgentConfig, EcuConfig, write_config

TARGET_RSS_MIB = 50.0


def python_baseline_kib() -> int:
    """The resident memory of a bare interpreter, for scale."""
    bare = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)  # let it finish starting
        return memory_kib(bare.pid)["VmRSS"]
    finally:
        bare.communicate(b"")


def write_car(car_dir: Path, mqtt_url: str) -> Path:
    expires = datetime.now(UTC) + timedelta(days=365)
    config = AgentConfig(
        vin=make_vin("1HG", "CM826", "R", "A", secrets.randbelow(10**6)),
        ecus=(EcuConfig("ECU-0001", "bench-hw", "1.0"),),
        mqtt_url=mqtt_url,
        repo_url="http://127.0.0.1:9/repo",
        state_dir=car_dir / "state",
        image_root=create_root(RoleSigners.generate(), expires),
        director_root=create_root(RoleSigners.generate(single_online_key=True), expires),
    )
    path = car_dir / "agent.toml"
    write_config(config, path)
    return path


def measure(idle: float, mqtt_url: str, workdir: Path) -> dict[str, Any]:
    config = write_car(workdir / "car", mqtt_url)
    log = workdir / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "vehicle_agent.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        time.sleep(5)  # start-up and the first connect
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        startup_cpu = cpu_seconds(agent.pid)
        time.sleep(idle)
        idle_cpu = cpu_seconds(agent.pid) - startup_cpu
        memory = memory_kib(agent.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    return {
        "mqtt_url": mqtt_url,
        "idle_seconds": idle,
        "startup_cpu_seconds": round(startup_cpu, 3),
        "idle_cpu_seconds": round(idle_cpu, 3),
        "idle_cpu_percent": round(100 * idle_cpu / idle, 3),
        "rss_mib": round(memory["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "python_baseline_rss_mib": round(python_baseline_kib() / 1024, 1),
        "target_rss_mib": TARGET_RSS_MIB,
        "agent_log_tail": log.read_text(errors="replace").splitlines()[-5:],
    }


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("idle window", f"{result['idle_seconds']:.0f} s"),
        ("CPU used while idle", f"{result['idle_cpu_seconds']:.3f} s ({result['idle_cpu_percent']:.2f} %)"),
        ("CPU used to start and connect", f"{result['startup_cpu_seconds']:.2f} s"),
        ("resident memory", f"{result['rss_mib']:.1f} MiB (target < {result['target_rss_mib']:.0f})"),
        ("peak resident memory", f"{result['peak_rss_mib']:.1f} MiB"),
        ("bare python, for scale", f"{result['python_baseline_rss_mib']:.1f} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=20.0, help="seconds to measure while idle")
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883", help="the broker the car connects to")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agent-idle-") as tmp:
        result = measure(args.idle, args.mqtt_url, Path(tmp))
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
