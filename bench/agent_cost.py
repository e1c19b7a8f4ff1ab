"""What the agent's own work costs per car: the floor under any fleet run on this machine.

Runs the real agent (``Agent.handle``: notice, refresh and verify the Director's and the
Image repository's metadata with python-tuf, download the bundle, check its signed length
and sha256, check the manifest, install into a file-backed A/B slot, boot, health check,
commit, a signed report at each step, the journal saved before each step) for ``--cars``
cars one after another in this process, with no network: metadata and bundles come from
an in-memory transport and reports go to an in-memory link. Each car has its own VIN,
state directory, report key and Director chain, so nothing is shared that a real car
would not share. The journal is not fsynced (as in the simulator).

What it prints is CPU milliseconds per car, and what that means for a fleet run on this
machine: every simulated car needs at least this much CPU however fast the server and the
broker are, so ``cars x ms / cores`` is a lower bound on the wall time of ``ota-bench``.

    .venv/bin/python -m bench.agent_cost --cars 300 --json bench/out/agent_cost.json
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from firmware_bundles import repo_paths
from firmware_bundles.messages import CampaignNotice, DirectorMetadata, ImageMetadata, ReportState
from firmware_bundles.report_signing import generate_report_key, private_key_pem
from firmware_bundles.uptane import (
    bundle_target_path,
)
from firmware_bundles.vin import make_vin
from simulator.signed_repo import SignedRepositories

HW = "bench-hw"
SERIAL = "ECU-0001"
OLD, NEW = "1.0.0", "2.0.0"
REPO = "http://repo.invalid/repo"
TARGET_SECONDS, TARGET_CARS = 60.0, 30_000  # the fleet target this floor is compared with


def build_repository(vins: list[str], image_bytes: int) -> tuple[dict[str, bytes], bytes, bytes]:
    """Both repositories as URL -> bytes: one Image repository, one Director chain per VIN."""
    repositories = SignedRepositories(REPO, vins, valid_for=timedelta(days=1))
    target = repositories.release(NEW, 2, hardware_id=HW, image_bytes=image_bytes)
    for vin in vins:
        repositories.assign({SERIAL: target}, vin=vin)
    return repositories.files, repositories.image_root, repositories.director_root


def carried(files: dict[str, bytes], vin: str) -> dict[str, Any]:
    """A notice's carried files, as ``ota-bench``'s server sends them: the car's Director chain and
    the Image repository's (each car still probes both roots and fetches its bundle over the network)."""

    def three(base: str) -> dict[str, str]:
        return {role: files[f"{base}{role}.json"].decode() for role in ("timestamp", "snapshot", "targets")}

    return {
        "director_metadata": DirectorMetadata(**three(repo_paths.director_metadata_url(REPO, vin))),
        "image_metadata": ImageMetadata(**three(repo_paths.image_metadata_url(REPO))),
    }


def run(
    cars: int,
    image_bytes: int,
    workdir: Path,
    profile: Path | None,
    *,
    carry: bool = False,
    cpu_clock: Callable[[], float] = time.process_time,
) -> dict[str, Any]:
    """Run the cars; the figures are kept as measured (the table rounds them), so each follows from the others."""
    from vehicle_agent.agent import Agent
    from vehicle_agent.config import AgentConfig, EcuConfig
    from vehicle_agent.link import FakeLink
    from vehicle_agent.transport import MemoryTransport
    from vehicle_agent.vehicle import FakeVehicle

    vins = [make_vin("5YJ", "SBENC", "N", "E", 100_000 + i) for i in range(cars)]
    started = time.perf_counter()
    files, image_root, director_root = build_repository(vins, image_bytes)
    keys = {vin: private_key_pem(generate_report_key()) for vin in vins}
    prepare_s = time.perf_counter() - started
    transport = MemoryTransport(dict(files))
    agents = []
    for vin in vins:
        config = AgentConfig(
            vin=vin,
            ecus=(EcuConfig(SERIAL, HW, OLD),),
            mqtt_url="mqtt://127.0.0.1:9",
            repo_url=REPO,
            state_dir=workdir / vin,
            image_root=image_root,
            director_root=director_root,
            report_key=keys[vin],
            durable=False,
        )
        link = FakeLink(vin)
        # a parked car with a charged battery, as the simulator's cars are (no state source warnings)
        agents.append((Agent(config, link=link, transport=transport, vehicle=FakeVehicle()), link))
    notices = [
        CampaignNotice(
            campaign_id=1,
            vin=vin,
            nonce=secrets.token_urlsafe(24),
            recall_number="26V-000001",
            title="bench",
            repo_url=REPO,
            issued_at=datetime.now(UTC),
            **(carried(files, vin) if carry else {}),
        )
        for vin in vins
    ]

    async def all_cars() -> list[ReportState]:
        return [await agent.handle(notice) for (agent, _), notice in zip(agents, notices, strict=True)]

    profiler = cProfile.Profile() if profile else None
    cpu0, wall0 = cpu_clock(), time.perf_counter()
    if profiler:
        profiler.enable()
    states = asyncio.run(all_cars())
    if profiler:
        profiler.disable()
    cpu, wall = cpu_clock() - cpu0, time.perf_counter() - wall0
    remedied = sum(1 for s in states if s is ReportState.REMEDIED)
    if remedied != cars:
        raise RuntimeError(f"only {remedied} of {cars} cars remedied: {sorted({s.value for s in states})}")
    reports = sum(len(link.reports) for _, link in agents)
    if profiler and profile:
        profiler.dump_stats(str(profile))
    ms = 1000 * cpu / cars
    state_bytes = sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file())
    cores = os.cpu_count() or 1
    floor_s = TARGET_CARS * ms / 1000 / cores
    return {
        "cars": cars,
        "remedied": remedied,
        "carried_metadata": carry,
        "image_bytes": image_bytes,
        "bundle_bytes": len(files[f"{REPO}/{repo_paths.TARGETS}{bundle_target_path(HW, NEW)}"]),
        "requests": len(transport.requests),
        "requests_per_car": len(transport.requests) / cars,
        "reports": reports,
        "reports_per_car": reports / cars,
        "cpu_ms_per_car": ms,
        "state_dir": str(workdir.parent),
        "state_bytes_per_car": state_bytes // cars,
        "wall_ms_per_car": 1000 * wall / cars,
        "cores": cores,
        "floor_seconds_for_30000_cars": floor_s,
        "target_seconds_for_30000_cars": TARGET_SECONDS,
        "prepare_seconds": prepare_s,
    }


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("cars (real agent, in-memory network)", f"{result['cars']:,} ({result['remedied']:,} remedied)"),
        ("bundle", f"{result['bundle_bytes']:,} bytes"),
        ("notices carry the metadata", "yes" if result["carried_metadata"] else "no"),
        ("requests / signed reports per car", f"{result['requests_per_car']:.2f} / {result['reports_per_car']:.2f}"),
        ("agent CPU per car", f"{result['cpu_ms_per_car']:.2f} ms"),
        (
            "car state (journal, slots, metadata) per car",
            f"{result['state_bytes_per_car']:,} bytes in {result['state_dir']}",
        ),
        (
            f"floor for {TARGET_CARS:,} cars on {result['cores']} cores",
            f"{result['floor_seconds_for_30000_cars']:.1f} s "
            f"of the {result['target_seconds_for_30000_cars']:.0f} s target",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print("### The agent's own cost per car (no server, no broker, no HTTP)\n")
    print("| metric | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=300, help="cars to run one after another (default 300)")
    parser.add_argument("--image-bytes", type=int, default=64 * 1024, help="image size (the simulator's default)")
    parser.add_argument(
        "--state-dir", type=Path, help="where the cars' state goes (default: the system's temporary directory)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the cars' run here and print its top")
    parser.add_argument(
        "--carry",
        action="store_true",
        help="notices carry the Director's and the Image repository's metadata, as ota-bench's do",
    )
    args = parser.parse_args(argv)
    if args.cars < 1:
        parser.error("--cars must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-agent-cost-", dir=args.state_dir) as tmp:
        result = run(args.cars, args.image_bytes, Path(tmp), args.profile, carry=args.carry)
    print_table(result)
    if args.profile:
        print()
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
