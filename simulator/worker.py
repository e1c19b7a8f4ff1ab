"""One process of a multi-process fleet: ``python -m simulator.worker SPEC``.

The parent (:mod:`simulator.workers`) writes SPEC, a JSON file: the agent-config fields
all its cars share (``common``), and per car its VIN, ECUs, broker URL, provisioned
identity and fault names (``cars``), plus the fault plan's timings, the connect pacing,
the HTTP pool size, the progress interval and the address the cars' MQTT sockets bind
to. This process runs those cars in one :class:`~simulator.runner.InProcessFleet`.

Standard output carries one JSON object a line and nothing else:

* ``{"event": "progress", ...}`` every ``progress_interval`` seconds (``FleetStats`` fields);
* ``{"event": "started", ...}`` once every car's agent exists (connects are paced);
* ``{"event": "summary", ..., "peak_rss_kb", "cpu_seconds", "open_files_max", "gc_seconds", ...}`` after ``stop``;
* ``{"event": "error", "message"}`` when the cars could not be started.

Standard input takes commands, one a line: ``launched`` (the campaign is out: late
joiners may come) and ``stop`` (end of input means stop too). Logs go to standard error.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from ota_server.infra import gctime
from ota_server.infra.gctime import GcTimer
from simulator.faults import CarFaults, FaultPlan
from simulator.procstat import memory_kib, open_files, raise_open_file_limit
from simulator.runner import InProcessFleet, Pacing

log = logging.getLogger("simulator.worker")
CAMPAIGN_YOUNG_GC = 1_000_000  # container allocations between young collections once launched (~100 MB held)


class Emitter:
    """JSON lines on standard output, whole lines only, from any thread."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, **data}, separators=(",", ":"))
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()


def cars_of(spec: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, CarFaults]]:
    """The agent-config documents and the faults of the spec's cars."""
    common: dict[str, Any] = dict(spec.get("common") or {})
    configs: list[dict[str, Any]] = []
    faults: dict[str, CarFaults] = {}
    for car in spec["cars"]:
        doc = {**common, **{k: v for k, v in car.items() if k != "faults"}}
        configs.append(doc)
        faults[doc["vin"]] = CarFaults.from_names(car.get("faults") or [])
    return configs, faults


def run(spec: Mapping[str, Any], emit: Emitter, commands: TextIO) -> int:
    gc_time = GcTimer().install()
    fleet = InProcessFleet(
        Path(spec["state_dir"]),
        faults=FaultPlan.from_json(spec.get("faults") or {}),
        pacing=Pacing(**spec.get("pacing", {})),
        source_address=spec.get("source_address"),
    )
    configs, car_faults = cars_of(spec)
    interval = float(spec.get("progress_interval", 0.5))
    stop = threading.Event()
    started = threading.Event()
    peak_files = 0

    def report_progress() -> None:
        nonlocal peak_files
        ticks = 0
        while not stop.wait(interval):
            if ticks % 10 == 0:  # listing /proc/self/fd with thousands of sockets is not free
                peak_files = max(peak_files, open_files_now())
            ticks += 1
            emit("progress", **fleet.stats().as_json())

    def read_commands() -> None:
        for line in commands:
            command = line.strip()
            if command == "launched":
                started.wait()
                # What the cars built while connecting (clients, sockets, sessions) lives on too:
                # out of the collector's reach as well, before the campaign's garbage starts. And a
                # young pass only every CAMPAIGN_YOUNG_GC container allocations: a car's objects of
                # one step live seconds, and a pass every 50,000 (~1 s of a campaign) walked them all.
                gctime.settle()
                gc.set_threshold(CAMPAIGN_YOUNG_GC, *gc.get_threshold()[1:])
                fleet.launched()
                gc_time.mark()  # the summary says what the collector cost from launch to done
            elif command == "stop":
                break
            elif command:
                log.warning("unknown command %r", command)
        stop.set()

    progress = threading.Thread(target=report_progress, name="progress", daemon=True)
    progress.start()
    threading.Thread(target=read_commands, name="commands", daemon=True).start()
    try:
        fleet.start_configs(configs, car_faults)
    except Exception as exc:
        log.exception("starting %d cars failed", len(configs))
        stop.set()
        progress.join()
        emit("error", message=f"{type(exc).__name__}: {exc}")
        fleet.stop()
        return 1
    # Thousands of cars' agents, links and journals live as long as the process: keep the cyclic
    # collector from walking them again, and run it less often (gc_seconds in the summary).
    gctime.settle()
    started.set()
    emit("started", **fleet.stats().as_json())
    stop.wait()
    progress.join()
    peak_files = max(peak_files, open_files_now())
    fleet.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary: dict[str, Any] = fleet.stats().as_json()
    summary.update(
        peak_rss_kb=memory_kib(os.getpid())["VmHWM"],
        cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3),
        open_files_max=peak_files,
        **gc_time.as_json(),
    )
    emit("summary", **summary)
    return 0


def open_files_now() -> int:
    try:
        return open_files(os.getpid())
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One process of a simulated fleet (started by simulator.workers)")
    parser.add_argument("spec", type=Path, help="the worker's JSON spec")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    logging.basicConfig(
        level=str(spec.get("log_level", "WARNING")).upper(),
        format=f"%(asctime)s %(levelname)s worker-{spec.get('index', 0)} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    limit = raise_open_file_limit()
    log.info("open-file limit %d for %d cars", limit, len(spec["cars"]))
    return run(spec, Emitter(sys.stdout), sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
