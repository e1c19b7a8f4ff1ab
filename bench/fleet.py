"""`ota-bench`: the whole stack with N cars and one campaign, and what it cost.

    ota-bench --cars 2000 --json bench/out/fleet-2000.json

Starts the stack: a fresh PostgreSQL database when 127.0.0.1:5432 answers (else SQLite),
Mosquitto as a hub plus bridged leaves when the binary exists (else the server's embedded
amqtt broker, for small fleets only), and ``ota serve`` as a child pointed at them; says
which. Then the fleet in worker processes (``simulator.workers``: real agents, their own
VINs, keys and MQTT sessions, paced connects), one safety recall (requested by the admin,
approved by a second person) with a plan that does not throttle (one wave, no rate
limit), and measures:

* seconds from launch (the approval) to every car remedied, from the server's progress;
* seconds from launch to the last notice published, seen by an independent MQTT client
  subscribed to the campaign topics on the hub;
* reports per second ingested (the server's ``ota_reports_ingested_total``, launch to done);
* reports sent (distinct reports the brokers acknowledged, summed over the workers) versus
  reports persisted (car rows of the campaign in ``campaign_events``, read from the
  database directly): they must be equal;
* server CPU milliseconds per car (utime + stime of the server process, launch to done,
  over the cars remedied); peak resident memory (VmHWM) of server, brokers and workers;
* the brokers' raw capacity in the same run (``bench.raw_broker``: Mosquitto's own
  clients, the same message count and size), and our rate as a ratio of it;
* the launch's notices again through the brokers alone (``bench.notice_floor``: the server's
  publishing code, the same count and mean size, no cars and no launch): the part of "launch to
  last notice" that is the brokers' and the publisher's on this machine.

It writes the JSON (``--json``), a markdown table (stdout and ``bench/out/fleet-N.md``)
and a plot of cars remedied over time (``bench/out/fleet-N.png``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console

from bench import notice_observer
from bench.notice_floor import FloorResult, floor_vins, notice_floor
from bench.raw_broker import RawResult, raw_capacity
from simulator.brokers import BrokerCluster, broker_count, mosquitto_binary
from simulator.cpu_share import autogroup_enabled, session_niceness
from simulator.errors import SimulatorError
from simulator.faults import FaultPlan
from simulator.fleet import MAX_ECUS, make_fleet
from simulator.operator_client import OperatorClient
from simulator.procstat import (
    command_cpu_seconds,
    machine_busy_seconds,
    raise_open_file_limit,
    tree_cpu_seconds,
    tree_peak_rss_mb,
)
from simulator.progress import Outcome, watch_campaign
from simulator.runner import Pacing
from simulator.scenario import (
    SafetyOfficer,
    ScenarioOptions,
    agent_configs,
    file_recall,
    launch_recall,
    register_fleet,
    upload_fixes,
    upload_installed,
)
from simulator.server_process import ServerProcess
from simulator.workers import MAX_NICENESS, ProcessFleet, broker_routes, default_workers

OUT_DIR = Path(__file__).resolve().parent / "out"
POSTGRES_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
EMBEDDED_MAX_CARS = 5000  # amqtt in the server's process: one event loop, its sockets count against the server's files
# One wave of every car, no rate limit, no windows: the benchmark measures the machinery, not a policy.
PLAN: dict[str, Any] = {"waves": [{"percent": 100}], "retry_backoff_s": 5}
KEYS = (
    "cars",
    "remedied",
    "failed",
    "seconds_to_all_remedied",
    "seconds_to_last_notice",
    "reports_sent",
    "reports_persisted",
    "reports_per_second",
    "server_cpu_ms_per_car",
    "peak_rss_mb",
    "broker_raw_msgs_per_second",
    "delivery_ratio",
    "backend",
)
PREPARATIONS = "ota_launch_preparations_total"  # launch requests whose signing ahead has finished
SETTLE_S = 60.0  # after the last car is done, how long reports may take to be stored


@dataclass(frozen=True)
class Options:
    cars: int = 2000
    ecus: int = 1  # ECUs per car, each its own hardware id and slots; the recall updates them all
    json_path: Path | None = None
    brokers: int | None = None
    workers: int | None = None
    embedded: bool = False
    # notices carry each car's signed Director files (the simulated cars run this tree's agent)
    carry_metadata: bool = True
    connect_rate: float = 1000.0
    timeout: float | None = None
    out_dir: Path = OUT_DIR
    postgres: str | None = POSTGRES_DSN
    faults: FaultPlan = field(default_factory=FaultPlan)
    seed: int | None = None
    keep_state: bool = False
    raw_publishers_per_leaf: int = 2
    car_state_dir: Path | None = None  # None: RAM (/dev/shm) when it has room, else the work directory
    sim_nice: int = 0  # the simulator workers' niceness (0: the same priority as the server)
    # The safety officer approves at once (the launch measured from the request, signing included),
    # not once the request's chains are signed ahead (the launch measured from the approval).
    approve_at_once: bool = False
    # The server's own settings for this run (``OTA_NAME=VALUE``, --server-setting): the bench starts the
    # server without the caller's OTA_ environment, so a tuning tried here is named, never inherited.
    server_settings: tuple[tuple[str, str], ...] = ()

    @property
    def campaign_timeout(self) -> float:
        return self.timeout if self.timeout is not None else 600.0 + self.cars * 0.1


# The server settings the bench itself sets for every run (server_env): not for --server-setting.
BENCH_SETTINGS = frozenset(
    {"OTA_DATABASE_URL", "OTA_MQTT_URL", "OTA_NOTICE_CARRIES_METADATA", "OTA_NOTICE_CARRIES_IMAGE_METADATA"}
)


def server_env(environ: Mapping[str, str], options: Options, database_url: str, mqtt_url: str | None) -> dict[str, str]:
    """The server process's environment: the caller's without its ``OTA_`` settings (a developer's
    shell must not change what a run measures; ``OTA_SQL_PROFILE*``, the statement profile, is kept),
    then the run's own (database, broker, notices carrying metadata) and ``--server-setting``'s."""
    env = {k: v for k, v in environ.items() if not k.startswith("OTA_") or k.startswith("OTA_SQL_PROFILE")}
    env["OTA_DATABASE_URL"] = database_url
    env["OTA_NOTICE_CARRIES_METADATA"] = "1" if options.carry_metadata else "0"
    env["OTA_NOTICE_CARRIES_IMAGE_METADATA"] = "1" if options.carry_metadata else "0"
    if mqtt_url is not None:
        env["OTA_MQTT_URL"] = mqtt_url
    env.update(options.server_settings)
    return env


def server_setting(text: str) -> tuple[str, str]:
    """``--server-setting``'s ``OTA_NAME=VALUE``; ValueError says what is wrong."""
    name, equals, value = text.partition("=")
    if not equals or not name.startswith("OTA_") or name == "OTA_" or not name.replace("_", "").isalnum():
        raise ValueError(f"--server-setting takes OTA_NAME=VALUE (a server setting), not {text!r}")
    if name in BENCH_SETTINGS:
        raise ValueError(
            f"--server-setting {name}: the bench sets it for every run ({', '.join(sorted(BENCH_SETTINGS))})"
        )
    return name, value


# -- the stack -----------------------------------------------------------------------------


@dataclass
class Backend:
    database: str  # "postgresql" or "sqlite"
    database_url: str
    database_detail: str
    broker: str  # "mosquitto" or "amqtt"
    broker_detail: str
    brokers: int

    def as_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "database_detail": self.database_detail,
            "broker": self.broker,
            "broker_detail": self.broker_detail,
            "brokers": self.brokers,
        }


def _dsn_host_port(dsn: str) -> tuple[str, int]:
    parts = dict(item.split("=", 1) for item in dsn.split() if "=" in item)
    return parts.get("host", "127.0.0.1"), int(parts.get("port", "5432"))


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def database(options: Options, workdir: Path) -> Iterator[tuple[str, str, str]]:
    """(kind, SQLAlchemy URL, what to say): a fresh PostgreSQL database (dropped after), else SQLite."""
    if options.postgres:
        host, port = _dsn_host_port(options.postgres)
        if _reachable(host, port):
            import psycopg

            name = f"ota_bench_{secrets.token_hex(6)}"
            params = dict(item.split("=", 1) for item in options.postgres.split() if "=" in item)
            with psycopg.connect(options.postgres, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            user = params.get("user", "postgres")
            password = f":{params['password']}" if params.get("password") else ""
            url = f"postgresql+psycopg://{user}{password}@{host}:{port}/{name}"
            try:
                yield "postgresql", url, f"PostgreSQL at {host}:{port}, fresh database {name}"
            finally:
                with psycopg.connect(options.postgres, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        why = f"PostgreSQL not reachable at {host}:{port}"
    else:
        why = "PostgreSQL switched off"
    path = workdir / "server" / "ota.db"
    yield "sqlite", f"sqlite:///{path}", f"SQLite at {path} ({why})"


def mosquitto_version(binary: str) -> str:
    done = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False, timeout=10)
    match = re.search(r"mosquitto version (\S+)", done.stdout + done.stderr)
    return match.group(1) if match else "unknown version"


def car_events(database_url: str, campaign_id: int) -> int:
    """Reports persisted: the campaign's events that came from cars, counted in the database itself."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            count = conn.execute(
                text("SELECT count(*) FROM campaign_events WHERE campaign_id = :c AND source = 'car'"),
                {"c": campaign_id},
            ).scalar_one()
        return int(count)
    finally:
        engine.dispose()


def scrape(api_url: str) -> dict[str, float]:
    """The server's Prometheus metrics as {name{labels}: value}."""
    text = httpx.get(f"{api_url}/metrics", timeout=60).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def repo_requests(metrics: Mapping[str, float]) -> dict[str, int]:
    """The cars' repository requests over the server's life, by route and status (from its latency histogram)."""
    prefix = "ota_http_request_duration_seconds_count{"
    out: dict[str, int] = {}
    for name, value in metrics.items():
        if name.startswith(prefix) and value and "/repo/" in name:
            route = re.search(r'route="([^"]*)"', name)
            status = re.search(r'status="([^"]*)"', name)
            key = f"{route.group(1) if route else name} {status.group(1) if status else '?'}"
            out[key] = out.get(key, 0) + int(value)
    return dict(sorted(out.items()))


def rejected(metrics: Mapping[str, float]) -> dict[str, int]:
    prefix = "ota_messages_rejected_total{"
    out = {}
    for name, value in metrics.items():
        if name.startswith(prefix) and value:
            match = re.search(r'reason="([^"]*)"', name)
            out[match.group(1) if match else name] = int(value)
    return out


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Measured:
    """What one run measured, before it is turned into the JSON."""

    backend: Backend
    workers: int
    outcome: Outcome | None = None
    campaign_id: int | None = None
    seconds_to_done: float | None = None
    notices: list[float] = field(default_factory=list)  # seconds from launch, sorted
    timeline: list[dict[str, float]] = field(default_factory=list)
    reports_sent: int = 0
    report_bytes: int = 0
    status_messages: int = 0  # messages the cars sent with their steps (a lone report or a batch)
    manifest_messages: int = 0  # version manifests the cars sent (the rest of their status messages)
    manifests_in_batches: int = 0  # version manifests that rode in a report batch (no message of their own)
    reports_persisted: int = 0
    ingested: float = 0.0
    server_cpu_s: float = 0.0
    metrics_after: dict[str, float] = field(default_factory=dict)
    peak_rss: dict[str, float | None] = field(default_factory=dict)
    fleet: dict[str, Any] = field(default_factory=dict)
    workers_summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    raw: RawResult | None = None
    floor: FloorResult | None = None  # the launch's notices again, through the brokers alone
    settled: bool = False
    cpu_s: dict[str, float] = field(default_factory=dict)  # launch to done, per component and the whole machine
    load: dict[str, list[float]] = field(default_factory=dict)  # load averages at launch and when done
    launched_from: str = "request"  # what the launch is timed from: the request, or the approval
    fleet_session_niceness: int | None = None  # a worker's session against the services' (read from the kernel)


class Approval:
    """The safety officer's wait: approve once the server has signed ahead what the launch will sign
    (its ``ota_launch_preparations_total`` moves on), as a person reading the request would approve
    minutes later; or at once (``at_once``), the launch then timed from the request."""

    def __init__(self, api_url: str, console: Console, *, at_once: bool, timeout_s: float = 600.0) -> None:
        self._url = api_url
        self._console = console
        self._at_once = at_once
        self._timeout_s = timeout_s
        self._before = scrape(api_url).get(PREPARATIONS, 0.0)
        self.requested_at = time.monotonic()
        self.approved_at: float | None = None

    def wait(self) -> None:
        if self._at_once:
            return
        deadline = self.requested_at + self._timeout_s
        while scrape(self._url).get(PREPARATIONS, 0.0) <= self._before:
            if time.monotonic() > deadline:
                raise SimulatorError(f"the launch request was not prepared in {self._timeout_s:.0f} s")
            time.sleep(0.2)
        chains = int(scrape(self._url).get("ota_director_chains_ahead", 0.0))
        took = time.monotonic() - self.requested_at
        _say(self._console, f"launch request prepared in {took:.1f} s ({chains} chains signed ahead); approving")
        self.approved_at = time.monotonic()


class CpuWindow:
    """CPU seconds each process (and the whole machine) spends between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        now = {"machine": machine_busy_seconds(), "postgresql": command_cpu_seconds("postgres")}
        for name, pid in self.pids.items():
            try:
                now[name] = tree_cpu_seconds(pid)  # with its children: the server's signing processes
            except OSError:
                continue
        return now

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> dict[str, float]:
        end = self._now()
        return {name: round(end[name] - self._start[name], 2) for name in end if name in self._start}


CAR_STATE_BYTES = 300 * 1024  # a car's journal, A/B slots, metadata and download (~140 KiB measured), doubled
RAM_DIR = Path("/dev/shm")


def car_state_parent(options: Options, workdir: Path) -> tuple[Path, str]:
    """Where the simulated cars keep their state, and why there.

    A simulated car's flash is simulated: in RAM (tmpfs) its journal saves, slot writes and
    metadata renames cost the workers' CPU what they would cost a car, not an ext4 journal's
    kernel work (measured with ``bench.agent_cost``: 37.7 ms per car on ext4, 11.4 on tmpfs).
    """
    if options.car_state_dir is not None:
        return options.car_state_dir, "as given"
    needed = options.cars * options.ecus * CAR_STATE_BYTES
    if RAM_DIR.is_dir() and os.access(RAM_DIR, os.W_OK):
        free = shutil.disk_usage(RAM_DIR).free
        if free >= needed:
            return RAM_DIR, "RAM (tmpfs): a simulated car's flash"
        return workdir, f"the work directory: {RAM_DIR} has {free >> 20} MiB free, {needed >> 20} MiB needed"
    return workdir, f"the work directory: no writable {RAM_DIR}"


def _say(console: Console, text: str) -> None:
    console.print(text, highlight=False)


def run(options: Options, console: Console) -> Measured:
    raise_open_file_limit()
    binary = None if options.embedded else mosquitto_binary()
    if binary is None and options.cars > EMBEDDED_MAX_CARS:
        why = "--embedded given" if options.embedded else "mosquitto is not installed"
        raise SimulatorError(
            f"{options.cars} cars on the embedded amqtt broker ({why}): it takes at most {EMBEDDED_MAX_CARS}; "
            "install mosquitto for more"
        )
    with ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="ota-bench-"))
        if not options.keep_state:
            stack.callback(shutil.rmtree, workdir, True)
        else:
            _say(console, f"state kept in {workdir}")
        kind, url, db_detail = stack.enter_context(database(options, workdir))
        fleet = make_fleet(options.cars, seed=options.seed, ecus=options.ecus)
        cluster: BrokerCluster | None = None
        if binary is not None:
            count = options.brokers or broker_count(options.cars)
            routes = leaf_routes([car.vin for car in fleet.cars], options.cars, count - 1)
            cluster = stack.enter_context(
                BrokerCluster(workdir / "brokers", count, binary=binary, own_sessions=True, routes=routes)
            )
            broker_detail = (
                f"Mosquitto {mosquitto_version(binary)} x{count}: hub {cluster.hub_url} (server, observer), "
                f"{count - 1} bridged leaves for the cars ({', '.join(cluster.leaf_urls)}), "
                "each notice routed to its car's leaf only"
            )
            backend = Backend(kind, url, db_detail, "mosquitto", broker_detail, count)
        else:
            why = "--embedded given" if options.embedded else "mosquitto is not installed"
            backend = Backend(kind, url, db_detail, "amqtt", f"the server's embedded amqtt broker ({why})", 1)
        _say(console, f"database: {backend.database_detail}")
        _say(console, f"broker:   {backend.broker_detail}")
        env = server_env(os.environ, options, url, cluster.hub_url if cluster is not None else None)
        server = ServerProcess(workdir / "server", env=env, startup_timeout=180, own_session=True)
        endpoints = stack.enter_context(server)
        _say(console, f"server:   {endpoints.api_url} (pid {server.pid}), MQTT {endpoints.mqtt_url}")
        measured = Measured(backend, options.workers or default_workers(options.cars))
        admin = stack.enter_context(OperatorClient(endpoints.api_url, token=server.admin_token(), timeout=600))
        # the admin creates the people: an operator does the work and requests the launch, a
        # safety officer approves it (the two-person rule refuses the admin's own request)
        operator = admin.create_token(f"operator-{fleet.run_id}", "operator")
        client = OperatorClient(endpoints.api_url, token=operator, timeout=600)
        officer = admin.create_token(f"safety-officer-{fleet.run_id}", "approver")
        approver = stack.enter_context(SafetyOfficer(endpoints.api_url, token=officer, requester=client))

        started = time.monotonic()
        upload_installed(client, fleet)
        releases = upload_fixes(client, fleet, ScenarioOptions())
        _say(console, f"registering {options.cars} cars")
        register_fleet(client, fleet)
        measured.phases["register_s"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        configs = agent_configs(client, fleet)
        measured.phases["provision_s"] = round(time.monotonic() - started, 2)

        host, port = _host_port(endpoints.mqtt_url)
        observer = notice_observer.observer(host, port, workdir, mosquitto=cluster is not None)
        stack.callback(observer.close)
        parent, why = car_state_parent(options, workdir)
        cars_dir = Path(tempfile.mkdtemp(prefix="ota-bench-cars-", dir=parent))
        if not options.keep_state:
            stack.callback(shutil.rmtree, cars_dir, True)
        _say(console, f"cars' state: {cars_dir} ({why})")
        runner = ProcessFleet(
            cars_dir,
            workers=measured.workers,
            broker_urls=cluster.leaf_urls if cluster is not None else (),
            faults=options.faults,
            pacing=Pacing.per_second(options.connect_rate),
            console=console,
            niceness=options.sim_nice,
        )
        stack.callback(runner.stop)
        _say(console, f"starting {options.cars} cars in {measured.workers} worker processes")
        started = time.monotonic()
        runner.start(fleet, configs)
        measured.fleet_session_niceness = session_niceness(runner.procs[0].process.pid) if runner.procs else None
        runner.wait_connected(timeout=120 + options.cars / 50)
        measured.phases["connect_s"] = round(time.monotonic() - started, 2)

        recall = file_recall(client, fleet, releases, PLAN)
        pid = server.pid
        assert pid is not None
        before = scrape(endpoints.api_url)
        window = CpuWindow({"server": pid, **runner.pids(), **(cluster.pids() if cluster is not None else {})})
        window.start()
        measured.load["launch"] = [round(x, 2) for x in os.getloadavg()]
        launched = time.monotonic()
        approval = Approval(endpoints.api_url, console, at_once=options.approve_at_once)
        campaign = launch_recall(client, recall, approver, console, before_approval=approval.wait)
        if approval.approved_at is not None:  # timed from the approval: what the second person's click sets off
            launched = approval.approved_at
            measured.launched_from = "approval"
            measured.phases["request_to_prepared_s"] = round(launched - approval.requested_at, 2)
        runner.launched()
        measured.campaign_id = int(campaign["id"])
        _say(console, f"campaign {campaign['id']} launched: {campaign['population']} cars")

        def fetch() -> dict[str, Any]:
            runner.check()
            if cluster is not None:
                cluster.check()
            # counts only: the per-ECU joins, twice a second, were PostgreSQL's biggest cost per car (issue 19)
            state: dict[str, Any] = client.progress(measured.campaign_id or 0, ecus=False)
            counts = state["counts"]
            measured.timeline.append(
                {
                    "t": round(time.monotonic() - launched, 2),
                    "remedied": counts.get("remedied", 0),
                    "failed": counts.get("failed", 0) + counts.get("rolled_back", 0),
                }
            )
            return state

        measured.outcome = watch_campaign(
            fetch,
            timeout=options.campaign_timeout,
            console=console,
            poll_seconds=0.5,
            fleet=lambda: runner.stats().bars(),
        )
        done = time.monotonic()
        measured.cpu_s = window.stop()
        measured.load["done"] = [round(x, 2) for x in os.getloadavg()]
        measured.server_cpu_s = measured.cpu_s.get("server", 0.0)
        measured.metrics_after = scrape(endpoints.api_url)
        measured.seconds_to_done = round(done - launched, 2)
        measured.ingested = measured.metrics_after.get("ota_reports_ingested_total", 0.0) - before.get(
            "ota_reports_ingested_total", 0.0
        )

        # every report acknowledged by a broker should now be stored: give ingest a moment
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            measured.reports_persisted = car_events(url, measured.campaign_id)
            if measured.reports_persisted >= runner.stats().reports_sent:
                measured.settled = True
                break
            time.sleep(0.5)
        measured.peak_rss["server"] = tree_peak_rss_mb(pid)  # its signing processes included
        if cluster is not None:
            measured.peak_rss.update(cluster.peak_rss_mb())
        runner.stop()
        stats = runner.stats()
        measured.workers_summary = runner.summaries()
        measured.peak_rss.update(runner.peak_rss_mb())
        measured.reports_sent = stats.reports_sent
        measured.report_bytes = stats.report_bytes
        measured.status_messages = stats.status_messages
        measured.manifest_messages = stats.manifest_messages
        measured.manifests_in_batches = stats.manifests_in_batches
        measured.fleet = stats.as_json()
        measured.reports_persisted = car_events(url, measured.campaign_id)
        measured.notices = [round(t - launched, 3) for t in observer.notices(measured.campaign_id)]
        observer.close()
        server.stop()
        if cluster is not None and measured.reports_sent:
            _say(console, f"raw broker capacity: {measured.reports_sent} messages through Mosquitto's own clients")
            measured.raw = raw_capacity(
                cluster.hub,
                cluster.leaves,
                measured.reports_sent,
                round(measured.report_bytes / measured.reports_sent),
                workdir / "raw",
                publishers_per_leaf=options.raw_publishers_per_leaf,
            )
        elif cluster is None:
            measured.raw = RawResult(0, 0, 0, None, None, "embedded amqtt broker: no Mosquitto clients to measure with")
        notice_bytes = observer.notice_bytes()
        if cluster is not None and measured.notices and notice_bytes:
            count = len(measured.notices)
            _say(console, f"notice floor: {count} notices of {notice_bytes} bytes through the brokers alone")
            measured.floor = notice_floor(cluster.hub, cluster.leaves, count, notice_bytes)
        return measured


def leaf_routes(cars: Sequence[str], floor_notices: int, leaves: int) -> list[list[str]]:
    """The VINs whose notices each leaf's bridge carries in: its own cars' (spread over the leaves as
    the workers spread them) and its share of the floor's, as a clustered broker routes a message only
    to the node holding its subscriber (the hub sent each notice to every leaf, issue 19)."""
    own = broker_routes(cars, leaves)
    floor = broker_routes(floor_vins(floor_notices), leaves)
    return [mine + share for mine, share in zip(own, floor, strict=True)]


def _host_port(mqtt_url: str) -> tuple[str, int]:
    parts = urlsplit(mqtt_url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


# -- the figures -------------------------------------------------------------------------------


def thin(points: list[dict[str, float]], most: int = 400) -> list[dict[str, float]]:
    """At most ``most`` points, evenly picked, always keeping the last."""
    if len(points) <= most:
        return points
    step = len(points) / most
    picked = [points[math.floor(i * step)] for i in range(most)]
    if picked[-1] is not points[-1]:
        picked[-1] = points[-1]
    return picked


def assemble(options: Options, measured: Measured) -> dict[str, Any]:
    """The JSON: the keys of :data:`KEYS` first, then extras."""
    outcome = measured.outcome
    remedied = outcome.remedied if outcome else 0
    failed = outcome.failed if outcome else 0
    all_remedied = outcome is not None and remedied == options.cars
    rate = measured.ingested / measured.seconds_to_done if measured.seconds_to_done else None
    raw = measured.raw.msgs_per_second if measured.raw else None
    rss = measured.peak_rss
    brokers = {k: v for k, v in rss.items() if k == "hub" or k.startswith("leaf-")}
    workers = {k: v for k, v in rss.items() if k.startswith("worker-")}

    def total(values: Mapping[str, float | None]) -> float | None:
        known = [v for v in values.values() if v is not None]
        return round(sum(known), 1) if known else None

    result: dict[str, Any] = {
        "cars": options.cars,
        "remedied": remedied,
        "failed": failed,
        "seconds_to_all_remedied": measured.seconds_to_done if all_remedied else None,
        "seconds_to_last_notice": measured.notices[-1] if len(measured.notices) >= options.cars else None,
        "reports_sent": measured.reports_sent,
        "reports_persisted": measured.reports_persisted,
        "reports_per_second": round(rate, 1) if rate is not None else None,
        "server_cpu_ms_per_car": round(1000 * measured.server_cpu_s / remedied, 2) if remedied else None,
        "peak_rss_mb": {
            "server": rss.get("server"),
            "broker": total(brokers) if brokers else None,
            "simulator": total(workers),
            "processes": dict(rss),
        },
        "broker_raw_msgs_per_second": raw,
        "delivery_ratio": round(rate / raw, 3) if rate and raw else None,
        "backend": measured.backend.as_json(),
        # extras
        "reports_match": measured.reports_sent == measured.reports_persisted,
        "seconds_to_done": measured.seconds_to_done,
        "notices_observed": len(measured.notices),
        # when the first, the 10th/50th/90th percentile and the last notice was seen (s from launch):
        # the first is the first tick's, the spread is publishing and the ticks that follow
        "notice_seconds": {
            q: measured.notices[min(len(measured.notices) - 1, int(len(measured.notices) * p))]
            for q, p in (("first", 0.0), ("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("last", 1.0))
        }
        if measured.notices
        else {},
        "campaign_id": measured.campaign_id,
        "failures_by_reason": outcome.failures_by_reason if outcome else {},
        "server_cpu_seconds": round(measured.server_cpu_s, 2),
        "reports_ingested": int(measured.ingested),
        "reports_duplicate": int(measured.metrics_after.get("ota_reports_duplicate_total", 0)),
        "messages_rejected": rejected(measured.metrics_after),
        "repo_requests": repo_requests(measured.metrics_after),
        "repo_requests_per_car": (
            round(sum(repo_requests(measured.metrics_after).values()) / options.cars, 2) if options.cars else None
        ),
        "report_bytes_mean": round(measured.report_bytes / measured.reports_sent) if measured.reports_sent else None,
        # the messages that carried the steps (several consecutive steps share one signed batch)
        "report_messages_per_car": round(measured.status_messages / options.cars, 2) if options.cars else None,
        "manifest_messages_per_car": round(measured.manifest_messages / options.cars, 2) if options.cars else None,
        "manifests_in_batches_per_car": (
            round(measured.manifests_in_batches / options.cars, 2) if options.cars else None
        ),
        "raw_broker": measured.raw.as_json() if measured.raw else None,
        "notice_floor": measured.floor.as_json() if measured.floor else None,
        "cores": os.cpu_count(),
        "cpu_seconds_launch_to_done": _cpu_summary(measured),
        "gc_seconds": _gc_seconds(measured),
        "load_average": measured.load,
        "workers": measured.workers,
        "simulator_niceness": options.sim_nice,
        "server_settings": dict(options.server_settings),  # --server-setting: none in a run of the defaults
        # a worker's session against the services' sessions, read back from the kernel: with --sim-nice each
        # worker leads a session of its own at that niceness where the CPU is shared by session
        "fleet_session_niceness": measured.fleet_session_niceness,
        # the server, each broker and the observer in a session of their own: with autogroup the
        # kernel shares the CPU by session, so each against the fleet as one more machine would
        "cpu_shared_by_session": autogroup_enabled(),
        # the launch (every "seconds from launch") is timed from the safety officer's approval, given
        # once the request's chains were signed ahead (phases_s.request_to_prepared_s), or from the request
        "launch_timed_from": measured.launched_from,
        "brokers": measured.backend.brokers,
        "connect_rate_per_s": options.connect_rate,
        "phases_s": measured.phases,
        "plan": PLAN,
        "ecus_per_car": options.ecus,
        "notices_carry_metadata": options.carry_metadata,
        "faults": options.faults.to_json() if options.faults.active else None,
        "fleet": measured.fleet,
        "worker_summaries": measured.workers_summary,
        "timeline": thin(measured.timeline),
    }
    return result


def _gc_seconds(measured: Measured) -> dict[str, float | None]:
    """Time in Python's cyclic garbage collector: the server's whole life, the workers' whole lives."""
    server = [v for k, v in measured.metrics_after.items() if k.startswith("ota_gc_seconds_total")]
    workers = [s["gc_seconds"] for s in measured.workers_summary.values() if "gc_seconds" in s]
    return {
        "server": round(sum(server), 2) if server else None,
        "workers": round(sum(workers), 2) if workers else None,
    }


def _cpu_summary(measured: Measured) -> dict[str, Any]:
    """Where the machine's CPU went from launch to done: our components, and everything else."""
    cpu = measured.cpu_s
    if not cpu:
        return {}
    workers = round(sum(v for k, v in cpu.items() if k.startswith("worker-")), 2)
    brokers = round(sum(v for k, v in cpu.items() if k == "hub" or k.startswith("leaf-")), 2)
    ours = round(cpu.get("server", 0.0) + workers + brokers, 2)
    database = cpu.get("postgresql", 0.0)
    machine = cpu.get("machine", 0.0)
    window = measured.seconds_to_done or 0.0
    cores = os.cpu_count() or 1
    return {
        "server": cpu.get("server"),
        "workers": workers,
        "brokers": brokers,
        "ours": ours,
        # every postgres process on the machine: the bench's database, and any other user's
        "postgresql": database,
        "machine_busy": machine,
        "everything_else": round(machine - ours - database, 2),  # other users' processes, the kernel's share
        "machine_capacity": round(window * cores, 2),
        "per_process": {k: v for k, v in cpu.items() if k not in ("machine", "postgresql")},
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def _cpu_notes(result: Mapping[str, Any]) -> str:
    """The workers' niceness when they ran behind the rest (``--sim-nice``), and how the kernel
    shared the CPU (by session: each service against the fleet, simulator.cpu_share)."""
    niceness = result.get("simulator_niceness") or 0
    by_session = result.get("cpu_shared_by_session")
    shared = None if by_session is None else "CPU shared by session" if by_session else "CPU shared by task"
    if shared and by_session and result.get("fleet_session_niceness"):
        shared += f", the workers' sessions at niceness {result['fleet_session_niceness']}"
    notes = ([f"niceness {niceness}"] if niceness else []) + ([shared] if shared else [])
    return f" ({', '.join(notes)})" if notes else ""


def _per_car_row(result: Mapping[str, Any]) -> str:
    """The issue's per-car figures: CPU from launch to done over the cars, in ms."""
    cpu = result.get("cpu_seconds_launch_to_done") or {}
    cars = result.get("cars") or 0
    if not cpu or not cars:
        return "n/a"
    return " / ".join(
        _fmt(1000 * cpu[k] / cars, "ms") if cpu.get(k) is not None else "n/a" for k in ("workers", "postgresql")
    )


def _cpu_row(result: Mapping[str, Any]) -> str:
    cpu = result.get("cpu_seconds_launch_to_done") or {}
    if not cpu:
        return "n/a"
    return " / ".join(_fmt(cpu.get(k), "s") for k in ("server", "workers", "brokers", "postgresql"))


def _machine_row(result: Mapping[str, Any]) -> str:
    cpu = result.get("cpu_seconds_launch_to_done") or {}
    if not cpu:
        return "n/a"
    load = result.get("load_average", {}).get("done")
    text = f"{_fmt(cpu.get('machine_busy'), 's')} / {_fmt(cpu.get('machine_capacity'), 's')}"
    return text + (f" (load {load[0]:.1f})" if load else "")


def _floor_row(result: Mapping[str, Any]) -> str:
    """Seconds for the launch's notices through the server's publishing code and the brokers alone,
    and the CPU each spent (``bench.notice_floor``)."""
    floor = result.get("notice_floor") or {}
    if floor.get("seconds") is None:
        return f"n/a ({floor['note']})" if floor.get("note") else "n/a"
    cpu = ", ".join(f"{name} {_fmt(seconds, 's')}" for name, seconds in floor["cpu_seconds"].items())
    return f"{_fmt(floor['seconds'], 's')} (CPU: {cpu})"


def _launch_row(result: Mapping[str, Any]) -> str:
    """The request, or the approval given once the request's chains were signed ahead (and how long that took)."""
    if result.get("launch_timed_from") != "approval":
        return "the request (approved at once)"
    prepared = (result.get("phases_s") or {}).get("request_to_prepared_s")
    return f"the approval (request to chains signed ahead: {_fmt(prepared, 's')})"


def markdown(result: Mapping[str, Any]) -> str:
    rss = result["peak_rss_mb"]
    backend = result["backend"]
    rows = [
        ("cars", _fmt(result["cars"])),
        ("remedied / failed", f"{_fmt(result['remedied'])} / {_fmt(result['failed'])}"),
        ("launch to 100% remedied", _fmt(result["seconds_to_all_remedied"], "s")),
        ("launch to last notice published", _fmt(result["seconds_to_last_notice"], "s")),
        ("launch timed from", _launch_row(result)),
        ("reports ingested per second", _fmt(result["reports_per_second"])),
        (
            "reports sent / persisted",
            f"{_fmt(result['reports_sent'])} / {_fmt(result['reports_persisted'])}"
            + ("" if result["reports_sent"] == result["reports_persisted"] else " **MISMATCH**"),
        ),
        ("report messages per car (steps share signed batches)", _fmt(result.get("report_messages_per_car"))),
        ("manifest messages per car", _fmt(result.get("manifest_messages_per_car"))),
        ("manifests riding in report batches per car", _fmt(result.get("manifests_in_batches_per_car"))),
        ("server CPU per car (its signing processes included)", _fmt(result["server_cpu_ms_per_car"], "ms")),
        ("CPU per car: workers / PostgreSQL", _per_car_row(result)),
        ("peak RSS server (its signing processes included)", _fmt(rss["server"], "MiB")),
        ("peak RSS brokers (sum)", _fmt(rss["broker"], "MiB")),
        ("peak RSS simulator workers (sum)", _fmt(rss["simulator"], "MiB")),
        ("raw broker capacity", _fmt(result["broker_raw_msgs_per_second"], "msgs/s")),
        ("the launch's notices through the brokers alone (no cars, no launch)", _floor_row(result)),
        (
            "delivery ratio (ingested / raw)",
            "n/a" if result["delivery_ratio"] is None else f"{result['delivery_ratio']:.4f}",
        ),
        ("database", backend["database"]),
        ("broker", f"{backend['broker']} x{backend['brokers']}"),
        ("workers / cores", f"{result['workers']} / {result['cores']}" + _cpu_notes(result)),
        (
            "worst worker event-loop lag / MQTT reconnects",
            f"{_fmt(result['fleet'].get('loop_lag_max_s'), 's')} / {_fmt(result['fleet'].get('reconnects'))}",
        ),
        ("CPU launch to done: server / workers / brokers / PostgreSQL", _cpu_row(result)),
        ("CPU launch to done: machine busy / capacity", _machine_row(result)),
        (
            "garbage collector, whole run: server / workers",
            " / ".join(_fmt((result.get("gc_seconds") or {}).get(k), "s") for k in ("server", "workers")),
        ),
        (
            "setup: register / provision / connect",
            " / ".join(_fmt(result["phases_s"].get(k), "s") for k in ("register_s", "provision_s", "connect_s")),
        ),
    ]
    if result.get("server_settings"):
        rows.append(
            ("server settings (--server-setting)", ", ".join(f"{k}={v}" for k, v in result["server_settings"].items()))
        )
    if result.get("faults"):
        fleet = result["fleet"]
        rows.append(
            (
                "faults seen",
                f"power cuts {fleet.get('power_cuts', 0)}, late joiners {fleet.get('late_joined', 0)}, "
                f"slow cars {fleet.get('slow_cars', 0)}",
            )
        )
    lines = [f"### ota-bench: {result['cars']:,} cars", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    processes = ", ".join(f"{k} {_fmt(v)}" for k, v in rss["processes"].items())
    lines += ["", f"Peak RSS per process (MiB): {processes}", ""]
    return "\n".join(lines)


def plot(result: Mapping[str, Any], notices: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    timeline = result["timeline"]
    ax.plot([p["t"] for p in timeline], [p["remedied"] for p in timeline], label="cars remedied (server)")
    if any(p["failed"] for p in timeline):
        ax.plot([p["t"] for p in timeline], [p["failed"] for p in timeline], label="failed or rolled back")
    if notices:
        ax.plot(notices, range(1, len(notices) + 1), linestyle="--", label="notices seen by the observer")
    ax.axhline(result["cars"], color="grey", linewidth=0.5)
    ax.set_xlabel("seconds since launch")
    ax.set_ylabel("cars")
    backend = result["backend"]
    ax.set_title(f"{result['cars']:,} cars, {backend['database']} + {backend['broker']} x{backend['brokers']}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def write_outputs(options: Options, result: dict[str, Any], notices: list[float]) -> tuple[Path, Path]:
    options.out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    md_path = options.out_dir / f"fleet-{options.cars}.md"
    md_path.write_text(table)
    png_path = options.out_dir / f"fleet-{options.cars}.png"
    plot(result, notices, png_path)
    if options.json_path is not None:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(table, flush=True)
    return md_path, png_path


# -- the command -----------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="ota-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=2000, help="fleet size (default 2000)")
    parser.add_argument(
        "--ecus", type=int, default=1, help="ECUs per car, each its own hardware id; one recall updates all (default 1)"
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="write the figures here as JSON")
    parser.add_argument("--brokers", type=int, help="Mosquitto processes: a hub + leaves (default 1 + cars/15000)")
    parser.add_argument("--workers", type=int, help="simulator processes (default max(2, cars/8000))")
    parser.add_argument("--embedded", action="store_true", help="use the server's embedded amqtt broker")
    parser.add_argument(
        "--sim-nice",
        type=int,
        default=0,
        help=f"run the simulator workers at this niceness, 0 to {MAX_NICENESS} (default 0): the fleet then takes "
        "only the CPU the server, the database and the brokers leave, as cars with their own processors would",
    )
    parser.add_argument(
        "--approve-at-once",
        action="store_true",
        help="the safety officer approves right after the request, before its chains are signed ahead: the launch "
        "is then timed from the request (default: approved once they are, timed from the approval)",
    )
    parser.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="OTA_NAME=VALUE",
        help="a server setting for this run, e.g. OTA_NOTICE_CONCURRENCY=8000 (repeatable; recorded in the JSON); "
        "the server never inherits the caller's OTA_ environment",
    )
    parser.add_argument(
        "--no-carry",
        dest="carry_metadata",
        action="store_false",
        help="notices without the cars' signed Director metadata (each car fetches it)",
    )
    parser.add_argument("--connect-rate", type=float, default=1000.0, help="car connects per second (default 1000)")
    parser.add_argument("--timeout", type=float, help="seconds the campaign may take (default 600 + cars/10)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where fleet-N.md and fleet-N.png go")
    parser.add_argument(
        "--postgres",
        default=POSTGRES_DSN,
        help=f"libpq DSN of a server to make a fresh database on ('' = SQLite; default {POSTGRES_DSN!r})",
    )
    parser.add_argument("--seed", type=int, help="seed for the fleet and the fault picks")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary state directory")
    parser.add_argument(
        "--car-state-dir",
        type=Path,
        help="where the simulated cars keep their state (default: /dev/shm when it has room, else the work directory)",
    )
    parser.add_argument("--raw-publishers-per-leaf", type=int, default=2, help="mosquitto_pub processes per leaf")
    faults = parser.add_argument_group("faults (shares of the fleet, exact counts)")
    faults.add_argument("--fail-rate", type=float, default=0.0, help="new slot fails its health check (rolled_back)")
    faults.add_argument("--fail-times", type=int, default=0, help="failing cars fail only their first N attempts")
    faults.add_argument("--offline-rate", type=float, default=0.0, help="cars that connect --offline-seconds late")
    faults.add_argument("--offline-seconds", type=float, default=30.0, help="how late an offline car connects")
    faults.add_argument("--defer-rate", type=float, default=0.0, help="cars not parked when notified: they defer")
    faults.add_argument("--defer-seconds", type=float, default=2.0, help="how long a deferring car stays unparked")
    faults.add_argument("--slow-rate", type=float, default=0.0, help="cars on a slow link (--slow-bytes-per-second)")
    faults.add_argument("--slow-bytes-per-second", type=float, default=8192.0, help="a slow car's HTTP speed")
    faults.add_argument("--power-cut-rate", type=float, default=0.0, help="cars that lose power mid-install")
    faults.add_argument("--power-cut-seconds", type=float, default=1.0, help="how long the power stays off")
    faults.add_argument("--late-rate", type=float, default=0.0, help="cars that first come online after the launch")
    faults.add_argument("--late-seconds", type=float, default=5.0, help="how long after the launch they come")
    args = parser.parse_args(argv)
    if args.cars < 1:
        parser.error("--cars must be at least 1")
    if not 1 <= args.ecus <= MAX_ECUS:
        parser.error(f"--ecus must be 1 to {MAX_ECUS}")
    if not 0 <= args.sim_nice <= MAX_NICENESS:
        parser.error(f"--sim-nice must be 0 to {MAX_NICENESS}")
    if args.brokers is not None and args.brokers < 2:
        parser.error("--brokers is a hub and at least one leaf: 2 or more")
    try:
        settings = tuple(server_setting(text) for text in args.server_setting)
    except ValueError as exc:
        parser.error(str(exc))
    if len({name for name, _ in settings}) < len(settings):
        parser.error("--server-setting names a setting twice")
    try:
        plan = FaultPlan(
            fail_rate=args.fail_rate,
            offline_rate=args.offline_rate,
            defer_rate=args.defer_rate,
            slow_rate=args.slow_rate,
            power_cut_rate=args.power_cut_rate,
            late_rate=args.late_rate,
            seed=args.seed,
            fail_times=args.fail_times or None,
            offline_seconds=args.offline_seconds,
            defer_seconds=args.defer_seconds,
            slow_bytes_per_second=args.slow_bytes_per_second,
            power_cut_seconds=args.power_cut_seconds,
            late_seconds=args.late_seconds,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        cars=args.cars,
        ecus=args.ecus,
        json_path=args.json_path,
        brokers=args.brokers,
        workers=args.workers,
        embedded=args.embedded,
        carry_metadata=args.carry_metadata,
        connect_rate=args.connect_rate,
        timeout=args.timeout,
        out_dir=args.out_dir,
        postgres=args.postgres or None,
        faults=plan,
        seed=args.seed,
        keep_state=args.keep_state,
        car_state_dir=args.car_state_dir,
        sim_nice=args.sim_nice,
        approve_at_once=args.approve_at_once,
        raw_publishers_per_leaf=args.raw_publishers_per_leaf,
        server_settings=settings,
    )


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP stop a run as Ctrl-C does, everything it started stopped: its server and
    brokers run in sessions of their own (simulator.cpu_share), out of reach of a signal sent to
    the bench's process group."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    console = Console(stderr=True)
    interrupt_on_termination()
    try:
        measured = run(options, console)
    except (SimulatorError, httpx.HTTPError, OSError) as exc:
        console.print(f"[red]ota-bench failed:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]ota-bench interrupted[/yellow] (everything it started was stopped)")
        return 130
    result = assemble(options, measured)
    md_path, png_path = write_outputs(options, result, measured.notices)
    console.print(f"table {md_path}, plot {png_path}" + (f", JSON {options.json_path}" if options.json_path else ""))
    if not result["reports_match"]:
        console.print(
            f"[bold red]MISMATCH: {result['reports_sent']} reports sent but {result['reports_persisted']} persisted"
            f"[/bold red] (rejected: {result['messages_rejected'] or 'none'}; duplicates: "
            f"{result['reports_duplicate']})"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
