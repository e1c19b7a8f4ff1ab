"""Several Mosquitto processes joined by Mosquitto's own bridges: one hub, some leaves.

A process here may hold at most 20,000 open files and a broker address:port can be
reached from only ~28,000 ephemeral ports, so 30,000 cars need more than one broker. The
server (and anything that watches the whole fleet) connects to the hub, broker 0; cars
connect to the leaves, at most ~15,000 each (:func:`broker_count`). Each leaf is a stock
Mosquitto whose config has a ``connection`` bridge to the hub (:func:`bridge_conf`):

    topic ota/v1/vehicles/+/status out 1      reports, QoS 1, to the server
    topic ota/v1/vehicles/+/presence out 1    presence (retained) to the server
    topic ota/v1/vehicles/+/campaigns in 1    notices and withdrawals (retained) to the cars
    topic ota-bench/raw/# out 1               the benchmark's raw-capacity messages

When the cluster knows which cars connect to which leaf (``routes``, as ``ota-bench`` does),
the campaigns line becomes one ``topic ota/v1/vehicles/<VIN>/campaigns in 1`` per car of that
leaf (15,000 lines take the bridge ~0.3 s to subscribe): the hub sends each notice to the one
leaf holding the car, as EMQX routes a message only to the nodes with a subscriber.

The bridge announces itself (``try_private``), so the hub forwards with the retain flag as
published: a notice retained on the hub is stored retained on its leaf (every leaf, unrouted), and a car that
connects after the launch still gets it. QoS 1 all the way, with queues large enough for
a whole fleet's reports (``max_queued_messages``), so a burst is queued, not dropped. No
router of our own: only configuration (``tests/simulator/test_brokers.py`` checks both
directions, retained and late, with real processes).
"""

from __future__ import annotations

import contextlib
import getpass
import math
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from firmware_bundles import topics
from simulator.errors import SimulatorError
from simulator.procstat import peak_rss_mb, raise_open_file_limit
from simulator.server_process import terminate

HOST = "127.0.0.1"
CARS_PER_BROKER = 15_000
QUEUE_LIMIT = 1_000_000  # QoS 1 messages queued per client (the server, a bridge) before any is dropped
PROBE_PREFIX = "PROBE-"  # the "VIN" of a bridge probe's campaign topic: not a car
CAMPAIGNS = topics.campaign_topic("+")  # every car's notices
INFLIGHT = 1000  # unacknowledged QoS 1 messages to one client: the server acknowledges a batch after storing it
RAW_PREFIX = "ota-bench/raw"
BRIDGED = (
    (topics.STATUS_SUBSCRIPTION, "out"),
    (topics.PRESENCE_SUBSCRIPTION, "out"),
    (CAMPAIGNS, "in"),
    (f"{RAW_PREFIX}/#", "out"),
)
START_TIMEOUT_S = 15.0


def mosquitto_binary() -> str | None:
    """The ``mosquitto`` executable, or None when it is not installed."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def mosquitto_tool(name: str) -> str | None:
    """``mosquitto_pub`` or ``mosquitto_sub``, or None."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if os.access(p, os.X_OK)), None
    )


def broker_count(cars: int, per_broker: int = CARS_PER_BROKER) -> int:
    """The hub plus enough leaves that none holds more than ``per_broker`` cars (at least one leaf)."""
    return 1 + max(1, math.ceil(cars / per_broker))


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_conf(port: int, *, host: str = HOST, run_as: str | None = None, queue_limit: int = QUEUE_LIMIT) -> str:
    """A plain, fast listener for a load run: no persistence, no connection limit, deep queues."""
    lines = [
        "per_listener_settings false",
        f"listener {port} {host}",
        "allow_anonymous true",
        "persistence false",
        "max_connections -1",
        f"max_queued_messages {queue_limit}",
        "max_queued_bytes 0",
        f"max_inflight_messages {INFLIGHT}",
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "connection_messages false",
    ]
    if run_as:
        lines.append(f"user {run_as}")
    return "\n".join(lines) + "\n"


def probe_vin(leaf: str) -> str:
    """The VIN whose campaign topic probes the hub -> ``leaf`` direction of its bridge."""
    return f"{PROBE_PREFIX}{leaf}"


def bridge_conf(name: str, hub_host: str, hub_port: int, cars: Sequence[str] | None = None) -> str:
    """The ``connection`` section that bridges a leaf to the hub (see the module docstring).

    ``cars``: the VINs of the cars on this leaf (and any other campaign topic routed to it, as the
    bench's floor notices). Then the bridge carries in only their campaign topics (and its
    probe's), one line each, as a cluster like EMQX routes a message only to the
    nodes with a subscriber for it; without them, every car's notice goes to every leaf, where
    most are dropped (issue 19: a 30,000-car launch on a hub and two leaves made the hub send each
    notice three times and each leaf take all 30,000).
    """
    lines = [
        f"connection {name}",
        f"address {hub_host}:{hub_port}",
        f"remote_clientid bridge-{name}",
        f"local_clientid bridge-{name}-local",
        "cleansession false",
        "try_private true",
        "notifications false",
        "start_type automatic",
        "restart_timeout 1 10",
        "keepalive_interval 60",
    ]
    bridged = BRIDGED if cars is None else [b for b in BRIDGED if b[0] != CAMPAIGNS]
    lines += [f"topic {pattern} {direction} {topics.QOS}" for pattern, direction in bridged]
    if cars is not None:
        lines += [f"topic {topics.campaign_topic(vin)} in {topics.QOS}" for vin in [probe_vin(name), *cars]]
    return "\n".join(lines) + "\n"


@dataclass
class Broker:
    name: str
    host: str
    port: int
    conf: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class BrokerCluster:
    """``with BrokerCluster(workdir, 3) as cluster:`` a hub and two bridged leaves, stopped after."""

    def __init__(
        self,
        workdir: Path,
        count: int = 2,
        *,
        binary: str | None = None,
        host: str = HOST,
        queue_limit: int = QUEUE_LIMIT,
        start_timeout: float = START_TIMEOUT_S,
        own_sessions: bool = False,
        routes: Sequence[Sequence[str]] | None = None,
    ) -> None:
        """``own_sessions``: each broker in a session of its own, on its own CPU share (``ota-bench``,
        :mod:`simulator.cpu_share`)."""
        if count < 2:
            raise ValueError("a cluster is a hub and at least one leaf: count >= 2")
        if routes is not None and len(routes) != count - 1:
            raise ValueError(f"routes name the cars of each leaf: {count - 1} lists, not {len(routes)}")
        # routes[i]: the VINs of the cars on leaf i + 1, whose notices only that leaf's bridge carries
        self.routes = routes
        found = binary or mosquitto_binary()
        if found is None:
            raise SimulatorError("the mosquitto binary is not installed")
        self.binary = found
        self.workdir = workdir
        self.host = host
        self.queue_limit = queue_limit
        self.start_timeout = start_timeout
        self.own_sessions = own_sessions
        self.brokers: list[Broker] = []
        for index in range(count):
            name = "hub" if index == 0 else f"leaf-{index}"
            self.brokers.append(Broker(name, host, 0, workdir / f"{name}.conf", workdir / f"{name}.log"))

    @property
    def hub(self) -> Broker:
        return self.brokers[0]

    @property
    def leaves(self) -> list[Broker]:
        return self.brokers[1:]

    @property
    def hub_url(self) -> str:
        return self.hub.url

    @property
    def leaf_urls(self) -> list[str]:
        return [leaf.url for leaf in self.leaves]

    def start(self) -> BrokerCluster:
        """Start the hub, then the leaves, and check that messages cross every bridge both ways."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        raise_open_file_limit()  # the brokers inherit it: each holds a socket per car
        run_as = getpass.getuser() if os.geteuid() == 0 else None  # as root, Mosquitto would switch users
        try:
            for broker in self.brokers:
                broker.port = free_port(self.host)
                text = broker_conf(broker.port, host=self.host, run_as=run_as, queue_limit=self.queue_limit)
                if broker is not self.hub:
                    index = self.leaves.index(broker)
                    cars = self.routes[index] if self.routes is not None else None
                    text += bridge_conf(broker.name, self.host, self.hub.port, cars)
                broker.conf.write_text(text)
                self._launch(broker)
            # a bridge takes ~2 s to come up: probe them all at once
            with ThreadPoolExecutor(len(self.leaves)) as pool:
                probes = [pool.submit(probe_bridge, self.hub, leaf, timeout=self.start_timeout) for leaf in self.leaves]
                for probe in probes:
                    probe.result()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, broker: Broker) -> None:
        with broker.log.open("wb") as log:
            broker.process = subprocess.Popen(
                [self.binary, "-c", str(broker.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.own_sessions,
            )
        deadline = time.monotonic() + self.start_timeout
        while not _reachable(broker.host, broker.port):
            if broker.process.poll() is not None or time.monotonic() > deadline:
                raise SimulatorError(f"mosquitto {broker.name} did not start:\n{broker.log_tail()}")
            time.sleep(0.05)

    def pids(self) -> dict[str, int]:
        return {b.name: b.pid for b in self.brokers if b.pid is not None}

    def peak_rss_mb(self) -> dict[str, float | None]:
        return {b.name: (peak_rss_mb(b.pid) if b.pid is not None else None) for b in self.brokers}

    def check(self) -> None:
        """Raise if a broker has exited."""
        for broker in self.brokers:
            if broker.process is not None and broker.process.poll() is not None:
                raise SimulatorError(f"mosquitto {broker.name} exited with {broker.process.returncode}")

    def stop(self) -> None:
        for broker in reversed(self.brokers):
            process, broker.process = broker.process, None
            if process is not None:
                terminate(process)

    def __enter__(self) -> BrokerCluster:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class Listener:
    """A small paho client in its own thread that remembers what arrives on one topic filter
    (and can publish): the bridge probe, and the benchmark's independent notice observer."""

    def __init__(self, host: str, port: int, topic: str, *, client_id: str | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self.messages: list[tuple[float, str, bytes, bool]] = []  # (monotonic time, topic, payload, retained)
        self.arrived = threading.Event()
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"listener-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()

    def _on_connect(self, client: object, _userdata: object, _flags: object, _rc: object, _props: object) -> None:
        self._client.subscribe(self.topic, qos=topics.QOS)

    def _on_message(self, _client: object, _userdata: object, message: object) -> None:
        received = (
            time.monotonic(),
            str(getattr(message, "topic", "")),
            bytes(getattr(message, "payload", b"")),
            bool(getattr(message, "retain", False)),
        )
        with self._lock:
            self.messages.append(received)
        self.arrived.set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._client.publish(topic, payload, qos=topics.QOS, retain=retain)

    def received(self) -> list[tuple[float, str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._client.loop_stop()
        with contextlib.suppress(Exception):
            self._client.disconnect()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def probe_bridge(hub: Broker, leaf: Broker, *, timeout: float = START_TIMEOUT_S) -> None:
    """Raise unless a message published on the hub reaches ``leaf`` and one published on ``leaf``
    reaches the hub (repeated until the bridge is up: it connects with a short back-off)."""
    token = secrets.token_hex(4)
    down = topics.campaign_topic(probe_vin(leaf.name))  # hub -> leaf, as a notice travels (routed or not)
    up = f"{RAW_PREFIX}/probe-{leaf.name}-{token}"  # leaf -> hub, as a report travels
    deadline = time.monotonic() + timeout
    with Listener(leaf.host, leaf.port, down) as at_leaf, Listener(hub.host, hub.port, up) as at_hub:
        while not (at_leaf.received() and at_hub.received()):
            if time.monotonic() > deadline:
                raise SimulatorError(
                    f"the bridge {leaf.name} -> hub carries nothing after {timeout:.0f}s "
                    f"(down {bool(at_leaf.received())}, up {bool(at_hub.received())}):\n{leaf.log_tail()}"
                )
            if not at_leaf.received():
                at_hub.publish(down, b"probe")
            if not at_hub.received():
                at_leaf.publish(up, b"probe")
            time.sleep(0.2)
