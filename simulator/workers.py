"""A fleet spread over several processes: the parent side of :mod:`simulator.worker`.

One process cannot hold 30,000 cars: it may keep at most 20,000 files open (one socket
per car, plus what a car opens while installing) and one event loop on one core would be
the bottleneck. :class:`ProcessFleet` is a :class:`~simulator.scenario.FleetRunner`
that cuts the fleet into contiguous slices, one per worker process (by default
``max(2, ceil(cars / 8000))``), spreads the cars over the given brokers (car ``i`` on
broker ``i mod B``), picks the faults over the whole fleet (so the seeded counts stay
exact), writes each worker its spec (a JSON file in the state directory) and reads the
JSON lines the workers print: their progress while they run and a summary when they
stop. :meth:`ProcessFleet.stats` is the sum.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from simulator.cpu_share import autogroup_enabled, lower_session_priority
from simulator.errors import SimulatorError
from simulator.faults import CarFaults, FaultPlan
from simulator.fleet import Fleet
from simulator.runner import FleetStats, Pacing

CARS_PER_WORKER = 8000
SHARED_KEYS = ("repo_url", "image_root", "director_root")  # the same for every car: written once per spec
STOP_TIMEOUT_S = 300.0


MAX_NICENESS = 19


def checked_niceness(niceness: int) -> int:
    """``niceness`` if it is one a worker may run at (0 to 19: lower priority only), else ValueError."""
    if not 0 <= niceness <= MAX_NICENESS:
        raise ValueError(f"niceness must be 0 to {MAX_NICENESS}, not {niceness}")
    return niceness


def lower_priority(pid: int, niceness: int) -> None:
    """Run process ``pid`` at ``niceness`` (0 to 19; 0 leaves it as it is).

    Only ever lower: that needs no privilege. ``ota-bench --sim-nice`` puts the simulated fleet
    behind the server, the database and the brokers on a shared machine, where real cars would
    bring their own processors (where the kernel shares the CPU by session, each worker's session
    too: :meth:`ProcessFleet._spawn`).
    """
    if checked_niceness(niceness):
        os.setpriority(os.PRIO_PROCESS, pid, niceness)


def default_workers(cars: int) -> int:
    return max(2, math.ceil(cars / CARS_PER_WORKER))


def source_address(index: int) -> str:
    """Worker ``index``'s own loopback address (Linux answers all of 127.0.0.0/8 on ``lo``).

    paho binds each car's socket before connecting, so from one address the whole machine
    has only ~28,000 ports for MQTT clients, whatever the broker; one address per worker
    gives each its own range.
    """
    return str(ipaddress.ip_address("127.0.1.1") + index)


def on_loopback(urls: Iterable[str]) -> bool:
    """Whether every broker is on this machine's loopback (so a loopback source address reaches it)."""
    for url in urls:
        host = urlsplit(url).hostname or ""
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            if host != "localhost":
                return False
    return True


def slices(count: int, parts: int) -> list[range]:
    """``range(count)`` cut into ``parts`` contiguous pieces whose sizes differ by at most one."""
    parts = max(1, min(parts, count))
    size, extra = divmod(count, parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(range(start, end))
        start = end
    return out


def on_brokers(agent_configs: Sequence[Mapping[str, Any]], urls: Sequence[str]) -> list[dict[str, Any]]:
    """Each car's config with its broker: car ``i`` connects to ``urls[i % len(urls)]`` (unchanged without urls)."""
    if not urls:
        return [dict(doc) for doc in agent_configs]
    return [{**doc, "mqtt_url": urls[i % len(urls)]} for i, doc in enumerate(agent_configs)]


def broker_routes(vins: Sequence[str], brokers: int) -> list[list[str]]:
    """The VINs on each of ``brokers`` brokers when the cars, in this order, are spread by :func:`on_brokers`."""
    return [list(vins[index::brokers]) for index in range(brokers)]


def worker_spec(
    index: int,
    state_dir: Path,
    agent_configs: Sequence[Mapping[str, Any]],
    car_faults: Mapping[str, CarFaults],
    *,
    faults: FaultPlan,
    pacing: Pacing,
    progress_interval: float,
    log_level: str,
    source: str | None = None,
) -> dict[str, Any]:
    """What one worker needs to know (see :mod:`simulator.worker`)."""
    first = agent_configs[0]
    common = {k: first[k] for k in SHARED_KEYS if k in first and all(doc.get(k) == first[k] for doc in agent_configs)}
    cars = []
    for doc in agent_configs:
        car = {k: v for k, v in doc.items() if k not in common}
        names = car_faults.get(str(doc["vin"]), CarFaults()).names()
        if names:
            car["faults"] = names
        cars.append(car)
    return {
        "index": index,
        "state_dir": str(state_dir),
        "common": common,
        "cars": cars,
        "faults": faults.to_json(),
        "pacing": {"batch": pacing.batch, "pause": pacing.pause},
        "progress_interval": progress_interval,
        "log_level": log_level,
        "source_address": source,
    }


@dataclass
class WorkerProcess:
    """One child and what it said last."""

    index: int
    cars: int
    process: subprocess.Popen[str]
    log_path: Path
    latest: FleetStats = field(default_factory=FleetStats)
    started: bool = False
    summary: dict[str, Any] | None = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return f"worker-{self.index}"

    def read(self, stdout: IO[str]) -> None:
        """The reader thread: one JSON object a line until the child closes its output."""
        for line in stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not ours (a stray print); the protocol lines are JSON
            event = message.pop("event", None)
            with self.lock:
                if event in ("progress", "started"):
                    self.latest = FleetStats.from_json(message)
                    self.started = self.started or event == "started"
                elif event == "summary":
                    self.summary = message
                    self.latest = FleetStats.from_json(message)
                elif event == "error":
                    self.error = str(message.get("message"))

    def send(self, command: str) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.closed or self.process.poll() is not None:
            return
        try:
            stdin.write(command + "\n")
            stdin.flush()
        except OSError:
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def problem(self) -> str | None:
        """Why this worker can no longer do its job, if it cannot."""
        if self.error:
            return f"{self.name}: {self.error}\n{self.log_tail()}"
        code = self.process.poll()
        if code is not None and self.summary is None:
            return f"{self.name} exited with {code}:\n{self.log_tail()}"
        return None


class ProcessFleet:
    """Cars in ``workers`` child processes, each an :class:`~simulator.runner.InProcessFleet`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        workers: int | None = None,
        broker_urls: Sequence[str] = (),
        faults: FaultPlan | None = None,
        pacing: Pacing | None = None,
        progress_interval: float = 1.0,
        log_level: str = "WARNING",
        env: Mapping[str, str] | None = None,
        console: Console | None = None,
        niceness: int = 0,
    ) -> None:
        """``niceness``: each worker's (see :func:`lower_priority`), checked before any is started."""
        self.niceness = checked_niceness(niceness)
        self.state_dir = state_dir
        self.workers = workers
        self.broker_urls = list(broker_urls)
        self.faults = faults or FaultPlan()
        self.pacing = pacing or Pacing()
        self.progress_interval = progress_interval
        self.log_level = log_level
        self.env = dict(os.environ if env is None else env)
        self.console = console
        self.car_faults: dict[str, CarFaults] = {}
        self.procs: list[WorkerProcess] = []
        self._threads: list[threading.Thread] = []
        self._stopped: FleetStats | None = None

    # -- FleetRunner ----------------------------------------------------------------------

    def start(self, fleet: Fleet, agent_configs: list[dict[str, Any]]) -> None:
        self.start_configs(agent_configs)

    def start_configs(self, agent_configs: Sequence[Mapping[str, Any]], timeout: float | None = None) -> None:
        """Spawn the workers and return once each has created its cars' agents (connects are paced)."""
        if not agent_configs:
            raise SimulatorError("a fleet needs at least one car")
        configs = on_brokers(agent_configs, self.broker_urls)
        self.car_faults = self.faults.assign([str(doc["vin"]) for doc in configs])
        count = self.workers or default_workers(len(configs))
        pieces = slices(len(configs), count)
        # each worker connects at its share of the rate, so the fleet's total is the pacing's
        pacing = Pacing.per_second(self.pacing.rate / len(pieces)) if math.isfinite(self.pacing.rate) else self.pacing
        self.state_dir.mkdir(parents=True, exist_ok=True)
        own_addresses = sys.platform.startswith("linux") and on_loopback(doc["mqtt_url"] for doc in configs)
        for index, piece in enumerate(pieces):
            part = [configs[i] for i in piece]
            spec = worker_spec(
                index,
                self.state_dir / f"worker-{index}",
                part,
                self.car_faults,
                faults=self.faults,
                pacing=pacing,
                progress_interval=self.progress_interval,
                log_level=self.log_level,
                source=source_address(index) if own_addresses else None,
            )
            self.procs.append(self._spawn(index, spec))
        limit = timeout if timeout is not None else 120.0 + len(configs) / 50
        self._until(
            lambda: all(p.started for p in self.procs),
            limit,
            "cars started",
            lambda: sum(p.latest.created for p in self.procs),
            len(configs),
        )

    def _spawn(self, index: int, spec: dict[str, Any]) -> WorkerProcess:
        spec_path = self.state_dir / f"worker-{index}.json"
        spec_path.write_text(json.dumps(spec, separators=(",", ":")))
        log_path = self.state_dir / f"worker-{index}.log"
        # Behind the services where the kernel shares the CPU by session: a session of its own, lowered
        # (simulator.cpu_share); the bench stops its workers itself, as it stops its services.
        own_session = self.niceness > 0 and autogroup_enabled() is True
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "simulator.worker", str(spec_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                env=self.env,
                start_new_session=own_session,
            )
        lower_priority(process.pid, self.niceness)
        if own_session:
            lower_session_priority(process.pid, self.niceness)
        worker = WorkerProcess(index, len(spec["cars"]), process, log_path)
        assert process.stdout is not None
        thread = threading.Thread(target=worker.read, args=(process.stdout,), name=worker.name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return worker

    def wait_connected(self, timeout: float) -> int:
        """Block until every car that should be online holds its MQTT session (or raise)."""

        def done() -> bool:
            stats = self.stats()
            return stats.connected >= stats.expected_online

        self._until(done, timeout, "cars connected", lambda: self.stats().connected, self.stats().expected_online)
        return self.stats().connected

    def launched(self) -> None:
        for worker in self.procs:
            worker.send("launched")

    def stats(self) -> FleetStats:
        if self._stopped is not None:
            return self._stopped
        parts = []
        for worker in self.procs:
            with worker.lock:
                parts.append(worker.latest)
        return FleetStats.total(parts)

    def check(self) -> None:
        """Raise :class:`SimulatorError` if a worker died or could not start its cars."""
        for worker in self.procs:
            problem = worker.problem()
            if problem:
                raise SimulatorError(problem)

    def stop(self) -> None:
        """Stop every worker (their cars disconnect) and keep their summaries."""
        if self._stopped is not None or not self.procs:
            return
        for worker in self.procs:
            worker.send("stop")
            if worker.process.stdin is not None:
                with contextlib.suppress(OSError):
                    worker.process.stdin.close()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in self.procs:
            try:
                worker.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        self._stopped = FleetStats.total(w.latest for w in self.procs)

    # -- figures ----------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        return {w.name: w.process.pid for w in self.procs}

    def summaries(self) -> dict[str, dict[str, Any]]:
        """Each worker's final summary (after :meth:`stop`)."""
        return {w.name: dict(w.summary) for w in self.procs if w.summary is not None}

    def peak_rss_mb(self) -> dict[str, float]:
        """Each worker's peak resident memory as it reported on stopping."""
        return {name: round(s["peak_rss_kb"] / 1024, 1) for name, s in self.summaries().items()}

    # -- waiting with a live bar --------------------------------------------------------------

    def _until(
        self, done: Callable[[], bool], timeout: float, label: str, count: Callable[[], int], total: int
    ) -> None:
        progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=self.console is None,
        )
        deadline = time.monotonic() + timeout
        with progress:
            task = progress.add_task(label, total=total)
            while True:
                self.check()
                progress.update(task, completed=count())
                if done():
                    progress.update(task, completed=count())
                    return
                if time.monotonic() > deadline:
                    raise SimulatorError(f"{label}: only {count()} of {total} after {timeout:.0f}s")
                time.sleep(0.2)
