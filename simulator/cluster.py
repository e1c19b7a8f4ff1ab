"""The multi-node topology on one machine: a private Mosquitto, a fresh PostgreSQL database and
N ``ota serve`` replicas sharing them, with the faults issue 8 asks for.

Used by ``tests/replicas/`` and ``python -m simulator.fault_scenarios``. Everything binds to
127.0.0.1; every process started here is stopped by the object that started it.

* :class:`Mosquitto`: ``/usr/sbin/mosquitto`` with its own config on a free port, persistence
  on (sessions, unacknowledged and retained messages survive :meth:`Mosquitto.restart`).
* :class:`Database`: a fresh PostgreSQL database; :meth:`Database.refuse_connections` closes it
  for a while (``ALLOW_CONNECTIONS false`` plus ``pg_terminate_backend`` of its sessions).
* :class:`Replica`: one ``ota serve`` child process; :meth:`Replica.kill` is SIGKILL,
  :meth:`Replica.start` again reuses the same data dir, port and MQTT client id.
* :class:`Cluster`: the lot, with the replicas sharing keys, CA and bundles (symlinks, as a
  deployment shares a secrets volume and a bundle store).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from simulator.errors import ServerError
from simulator.server_process import terminate

MOSQUITTO = os.environ.get("OTA_MOSQUITTO_BIN", "/usr/sbin/mosquitto")
PG_HOST = os.environ.get("OTA_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("OTA_TEST_PG_PORT", "5432"))
PG_ADMIN_DB = os.environ.get("OTA_TEST_PG_DB", "test")
SHARED_DIRS = ("keys", "ca", "bundles")  # what replicas share: secrets and the bundle store
GUARD_S = 5.0  # OTA_MQTT_SHARE_GUARD_S of the replicas (Mosquitto 2.0 forgets shared subscriptions)


PORT_TRIES = 3  # a replica's first start: ports tried when the one chosen is taken before it binds


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, timeout: float, poll: float = 0.1) -> None:
    """Poll ``check`` until true, or raise naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto:
    """A private Mosquitto (MQTT 5, shared subscriptions) on 127.0.0.1, persistence on."""

    def __init__(self, directory: Path, port: int | None = None, *, extra: str = "") -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> str:
        return "\n".join(
            [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                # As root Mosquitto drops to the "mosquitto" user, which could not write here.
                f"user {getpass.getuser()}",
                "persistence true",
                f"persistence_location {self.directory}/",
                "autosave_interval 5",
                "max_queued_messages 0",  # a replica that is down keeps its share queued, however long
                "max_inflight_messages 0",
                "max_packet_size 65536",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                self.extra,
                "",
            ]
        )

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(self.config())
        with (self.directory / "mosquitto.log").open("ab") as log:
            self._proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: _port_open(self.port) or self._exited(), f"mosquitto on port {self.port}", 20)
        if self._exited():
            raise ServerError(f"mosquitto exited at start: {self.log_tail()}")

    def _exited(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its sessions and queued messages before it exits."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.directory / "mosquitto.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()


def _admin_dsn() -> str:
    return f"host={PG_HOST} port={PG_PORT} dbname={PG_ADMIN_DB} user=postgres"


class Database:
    """A fresh PostgreSQL database (dropped on exit)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"ota_cluster_{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/{self.name}"

    @property
    def dsn(self) -> str:
        return f"host={PG_HOST} port={PG_PORT} dbname={self.name} user=postgres"

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())  # our own fixed SQL, no user input

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true')
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            return list(conn.execute(sql.encode(), params).fetchall())

    def refuse_connections(self) -> None:
        """Close the database: new connections are refused and every open one is cut."""
        self._admin(
            f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false',
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.name}'",
        )

    def allow_connections(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true')

    @contextmanager
    def outage(self, seconds: float) -> Iterator[None]:
        self.refuse_connections()
        try:
            time.sleep(seconds)
            yield
        finally:
            self.allow_connections()

    def __enter__(self) -> Database:
        self.create()
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.drop()


_METRIC = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>[-+0-9.eE]+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text to ``{'name' or 'name{labels}': value}`` (``_total`` suffix kept as sent)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _METRIC.match(line.strip())
        if match is None:
            continue
        key = match["name"] + (f"{{{match['labels']}}}" if match["labels"] else "")
        values[key] = float(match["value"])
    return values


@dataclass
class Replica:
    """One ``ota serve`` process of the cluster."""

    name: str
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: float = 0.0  # time.monotonic() of the last start
    ever_started: bool = False  # once up, its port is known to its clients: kept on every restart
    # counters of the incarnations killed or stopped so far (a restart starts from zero)
    past: dict[str, float] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def repo_url(self) -> str:
        return f"{self.api_url}/repo"

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"server-{self.name}.log"

    def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, PORT_TRIES + 1):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._launch(timeout)
            if not self._exited():
                self.ever_started = True
                return
            # The port free_port() chose was taken before the replica bound it (an outgoing
            # connection's source port, another test's server). Before its first start nothing
            # knows the port, so it takes another; a restart keeps its port (its clients know it).
            said = self.log_path.read_bytes()[logged:].decode(errors="replace")
            if self.ever_started or attempt == PORT_TRIES or "Address already in use" not in said:
                break
            self.port = free_port()
        raise ServerError(f"replica {self.name} exited during start-up:\n{self.log_tail()}")

    def _launch(self, timeout: float) -> None:
        ready = self.data_dir / "ready.json"
        ready.unlink(missing_ok=True)
        command = [sys.executable, "-m", "ota_server", "serve", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--ready-file", str(ready)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.starts += 1
        wait_for(lambda: ready.exists() or self._exited(), f"replica {self.name} to start", timeout)
        self.started_at = time.monotonic()

    def _exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    @property
    def running(self) -> bool:
        return not self._exited()

    def remember_counters(self) -> None:
        """Keep this incarnation's counters before it goes (best effort)."""
        try:
            for key, value in self.metrics().items():
                if key.startswith(("ota_reports_", "ota_messages_rejected")):
                    self.past[key] = self.past.get(key, 0.0) + value
        except (httpx.HTTPError, OSError):
            pass

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye; what it held in memory is gone (counters too)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        self._remember_from(proc)
        terminate(proc, 30.0)

    def _remember_from(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            self.remember_counters()

    def metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.api_url}/metrics", timeout=10)
        response.raise_for_status()
        return parse_metrics(response.text)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Cluster:
    """Mosquitto + PostgreSQL + ``replicas`` servers; ``with Cluster(dir) as cluster: ...``."""

    def __init__(self, directory: Path, replicas: int = 2, *, env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.broker = Mosquitto(directory / "broker")
        self.database = Database()
        base = {k: v for k, v in (os.environ if env is None else env).items() if not k.startswith("OTA_")}
        base.update({k: v for k, v in (env or {}).items() if k.startswith("OTA_")})
        self.replicas = [
            Replica(f"r{i + 1}", directory / f"replica-{i + 1}", self._env(base, i)) for i in range(replicas)
        ]

    def _env(self, base: dict[str, str], index: int) -> dict[str, str]:
        env = dict(base)
        env.update(
            {
                "OTA_DATABASE_URL": self.database.url,
                "OTA_MQTT_URL": self.broker.url,
                "OTA_MQTT_CLIENT_ID": f"ota-server-r{index + 1}",
                "OTA_MQTT_SHARE_GROUP": "ota-ingest",
                "OTA_INSTANCE_ID": f"r{index + 1}-{uuid.uuid4().hex[:6]}",
                "OTA_SCHEDULER_INTERVAL_S": env.get("OTA_SCHEDULER_INTERVAL_S", "1"),
                "OTA_LEASE_TTL_S": env.get("OTA_LEASE_TTL_S", "6"),
                # Mosquitto 2.0 forgets shared subscriptions when it restarts
                "OTA_MQTT_SHARE_GUARD_S": env.get("OTA_MQTT_SHARE_GUARD_S", str(GUARD_S)),
            }
        )
        return env

    @property
    def admin_token(self) -> str:
        return (self.replicas[0].data_dir / "admin-token").read_text().strip()

    def start(self) -> None:
        self.database.create()
        self.broker.start()
        first, *others = self.replicas
        first.start()  # makes the development keys, the CA and the admin token
        for replica in others:
            replica.data_dir.mkdir(parents=True, exist_ok=True)
            for name in SHARED_DIRS:
                source = first.data_dir / name
                source.mkdir(exist_ok=True)
                link = replica.data_dir / name
                if not link.exists():
                    link.symlink_to(source.resolve(), target_is_directory=True)
            replica.start()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        self.broker.stop()
        self.database.drop()

    def settle(self) -> None:
        """Wait until every replica's guard window (after its connect) is over: copies through the
        guard subscription are ingested only then, so a campaign launched after it is not doubled."""
        last = max(r.started_at for r in self.replicas)
        time.sleep(max(0.0, last + GUARD_S + 0.5 - time.monotonic()))

    def restart_replica(self, replica: Replica, down_s: float = 1.0) -> None:
        """SIGKILL, a pause, then start it again (same port, data dir and MQTT client id).

        Its counters are scraped just before the kill (the killed process cannot be asked after),
        so a few reports counted in between may be missing from the duplicate figures.
        """
        replica.remember_counters()
        replica.kill()
        time.sleep(down_s)
        replica.start()

    def counters(self) -> dict[str, float]:
        """The replicas' ingest counters added up, killed incarnations' last scrape included."""
        total: dict[str, float] = {}
        for replica in self.replicas:
            current = replica.metrics() if replica.running else {}
            for source in (replica.past, current):
                for key, value in source.items():
                    if key.startswith(("ota_reports_", "ota_messages_rejected")):
                        total[key] = total.get(key, 0.0) + value
        return total

    def per_replica_received(self) -> dict[str, float]:
        """Each replica's share of stored reports (current incarnation plus remembered ones)."""
        return {
            r.name: r.past.get("ota_reports_ingested_total", 0.0)
            + (r.metrics().get("ota_reports_ingested_total", 0.0) if r.running else 0.0)
            for r in self.replicas
        }

    def car_events(self, campaign_id: int) -> int:
        rows = self.database.query(
            "SELECT count(*) FROM campaign_events WHERE campaign_id = %s AND source = 'car'", campaign_id
        )
        return int(rows[0][0])

    def states(self, campaign_id: int) -> dict[str, int]:
        rows = self.database.query(
            "SELECT state, count(*) FROM campaign_vehicles WHERE campaign_id = %s GROUP BY state", campaign_id
        )
        return {str(state): int(n) for state, n in rows}

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()


def describe(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
