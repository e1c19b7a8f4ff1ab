"""Run many real agents in one process: one event loop in a background thread.

Each car is a real ``vehicle_agent.Agent`` with its own MQTT session, journal, TUF
metadata directories and file-backed A/B slots; their blocking work runs on a few
worker threads, each with its own kept-alive HTTP connection
(:class:`~simulator.http_transport.StdlibTransport`). Connects are paced
(:class:`Pacing`) so a fleet does not arrive at the broker all at once. Each car has a
:class:`~vehicle_agent.vehicle.FakeVehicle` (ready unless a fault says otherwise) and an
owner who accepts; a :class:`~simulator.faults.FaultPlan` injects failures.

:meth:`InProcessFleet.stats` counts what the cars did: every distinct report the broker
acknowledged (by ``(vin, campaign, attempt, deferrals, state)``, the key the server
stores each report under once, so a re-sent outbox is not counted twice), faults that
happened and agents that died. ``simulator.worker`` runs one of these per process.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import aiomqtt
from typing_extensions import override

from firmware_bundles import provisioning
from firmware_bundles.messages import ReportBatch, ReportState, StatusReport, VersionManifest, encode
from simulator.errors import SimulatorError
from simulator.faults import NO_FAULTS, CarFaults, FaultPlan, FaultyHealth, ThrottledTransport
from simulator.fleet import Fleet
from simulator.http_transport import StdlibTransport
from simulator.mqtt_upkeep import Housekeeping, Sessions
from vehicle_agent.agent import Agent
from vehicle_agent.config import AgentConfig, config_from_agent_config
from vehicle_agent.health import HeaderHealthCheck, HealthCheck
from vehicle_agent.link import CarMqttLink, tls_context
from vehicle_agent.owner import Consent, LoggingOwnerHook
from vehicle_agent.transport import Transport
from vehicle_agent.vehicle import FakeVehicle

log = logging.getLogger(__name__)

CONNECT_BATCH = 100
CONNECT_PAUSE = 0.05
# ota-bench, 300 cars, worker CPU per car: 8 threads 23.6 / 26.0 ms, 16: 27.9 / 27.9, 4: 26.3 / 28.2
WORKER_THREADS = 8
SLOW_THREADS_MAX = 256  # a slow car holds a thread (and its connection) while it crawls
MQTT_OPERATION_TIMEOUT_S = 300.0  # see _CountingLink
MISC_INTERVAL_S = 10.0  # paho's housekeeping for each car (simulator.mqtt_upkeep)
SIM_KEEPALIVE_S = 180  # a simulated car's MQTT keep-alive at least (see _CountingLink)
LAG_PROBE_S = 0.25


@dataclass(frozen=True)
class Pacing:
    """How fast cars connect: ``batch`` agents started, then ``pause`` seconds, and so on."""

    batch: int = CONNECT_BATCH
    pause: float = CONNECT_PAUSE

    def __post_init__(self) -> None:
        if self.batch < 1 or self.pause < 0:
            raise ValueError("pacing needs a batch of at least 1 and a pause of at least 0 s")

    @classmethod
    def per_second(cls, rate: float) -> Pacing:
        """About ``rate`` connects a second, in 20 small steps a second."""
        if not rate > 0:
            raise ValueError(f"a connect rate must be positive, got {rate}")
        batch = max(1, round(rate / 20))
        return cls(batch, batch / rate)

    @property
    def rate(self) -> float:
        return math.inf if self.pause == 0 else self.batch / self.pause


@dataclass
class FleetStats:
    """What a fleet (or several, summed) has done so far."""

    cars: int = 0
    created: int = 0  # agents made (start-up is paced)
    started: int = 0  # agents running (offline and late cars count once they come)
    expected_online: int = 0  # cars that should hold a session now
    connected: int = 0
    reports_sent: int = 0  # distinct reports (steps) the broker acknowledged, alone or in a batch
    report_bytes: int = 0  # their encoded size
    status_messages: int = 0  # messages that carried them (a lone report or a batch), re-sends included
    status_message_bytes: int = 0  # those messages' encoded size
    manifest_messages: int = 0  # version manifests the broker acknowledged (also status messages a car sends)
    manifests_in_batches: int = 0  # version manifests that rode in a report batch (no message of their own)
    sent_by_state: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # agents that stopped on an exception
    power_cuts: int = 0
    restarts: int = 0  # new agents started after a power cut
    late_joined: int = 0
    slow_cars: int = 0
    slow_bytes: int = 0  # bytes that went through a throttled link
    slow_seconds: float = 0.0  # time spent throttling them
    loop_lag_max_s: float = 0.0  # the worst delay of the fleet's event loop (a starved loop delays every car)
    reconnects: int = 0  # MQTT sessions made again after a drop (a lagging loop may miss keepalives)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FleetStats:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def total(cls, parts: Iterable[FleetStats]) -> FleetStats:
        """The sum of several fleets' stats (one per worker process)."""
        out = cls()
        by_state: Counter[str] = Counter()
        for part in parts:
            for f in fields(cls):
                if f.name == "sent_by_state":
                    by_state.update(part.sent_by_state)
                elif f.name == "loop_lag_max_s":
                    out.loop_lag_max_s = max(out.loop_lag_max_s, part.loop_lag_max_s)
                else:
                    setattr(out, f.name, getattr(out, f.name) + getattr(part, f.name))
        out.sent_by_state = dict(by_state)
        out.slow_seconds = round(out.slow_seconds, 3)
        return out

    def cars_in(self, *states: ReportState) -> int:
        """Distinct reports of these states: for a single attempt, the cars that reached them."""
        return sum(self.sent_by_state.get(state.value, 0) for state in states)

    def bars(self) -> dict[str, int]:
        """The cars' side of a live progress view (see ``simulator.progress.FLEET_BARS``)."""
        return {
            "cars": self.cars,
            "connected": self.connected,
            "notified": self.cars_in(ReportState.NOTIFIED),
            "remedied": self.cars_in(ReportState.REMEDIED),
            "failed": self.cars_in(ReportState.FAILED, ReportState.ROLLED_BACK),
        }


def identity_options(identity: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """AgentConfig fields from a provisioning answer: the report key, and TLS files (written to disk)."""
    options: dict[str, Any] = {}
    if identity.get("report_private_key"):
        options["report_key"] = str(identity["report_private_key"]).encode()
    if identity.get("client_certificate"):
        tls_dir = state_dir / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True)
        files = {
            "tls_ca": (provisioning.CA_CERT_FILE, "ca_certificate", False),
            "tls_cert": (provisioning.CLIENT_CERT_FILE, "client_certificate", False),
            "tls_key": (provisioning.CLIENT_KEY_FILE, "client_key", True),
        }
        for option, (name, key, private) in files.items():
            provisioning.write_file(tls_dir / name, str(identity[key]).encode(), private=private)
            options[option] = tls_dir / name
    return options


CAR_ORDER: ContextVar[int] = ContextVar("car_order", default=0)


class DepthFirstExecutor(ThreadPoolExecutor):
    """The cars' worker threads, taking the blocking work of the car that started first, first.

    A FIFO pool serves thousands of cars that got their notices together breadth first:
    step 1 of every car before step 2 of any, so no car is remedied until nearly all are,
    which is neither what a fleet of independent cars looks like nor what the server sees
    from one. Each car's task sets :data:`CAR_ORDER` (its start position); ``asyncio.to_thread``
    submits from that task's context, so the queue is ordered by car. The total work is the same.
    """

    def __init__(self, threads: int, *, name: str = "car-io") -> None:
        super().__init__(max_workers=threads, thread_name_prefix=name)
        self._queue: queue.PriorityQueue[tuple[float, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._closed = False
        self._guard = threading.Lock()
        self._workers = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(threads)]
        for worker in self._workers:
            worker.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._guard:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.put((CAR_ORDER.get(), next(self._seq), (future, fn, args, kwargs)))
        return future

    def _work(self) -> None:
        while True:
            _, _, item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._guard:
            if self._closed:
                return
            self._closed = True
            for _ in self._workers:
                self._queue.put((math.inf, next(self._seq), None))  # after the queued work
        if wait:
            for worker in self._workers:
                worker.join()


class _SimClient(aiomqtt.Client):
    """aiomqtt's client with paho's housekeeping (``loop_misc``) done by the worker's one
    :class:`~simulator.mqtt_upkeep.Housekeeping` instead of a timer per client (see there)."""

    upkeep: Housekeeping | None = None  # set by the link that makes it

    async def _misc_loop(self) -> None:
        upkeep = self.upkeep
        if upkeep is None:
            return await super()._misc_loop()
        ended = upkeep.add(self._client)
        try:
            await ended  # until its connection is gone (or aiomqtt cancels it as the socket closes)
        finally:
            upkeep.discard(self._client)


class _CountingLink(CarMqttLink):
    """The real MQTT link, telling the fleet about each report the broker acknowledged.

    One difference, for the simulation's sake: aiomqtt gives up waiting for a PUBACK after
    10 s of wall time, which for one car on its own CPU means the link is broken. Here one
    event loop, sharing its process's GIL with the cars' worker threads, serves thousands
    of cars, and under a full machine it can lag that long (``FleetStats.loop_lag_max_s``)
    while the broker acknowledged at once. The agent then keeps the report in its outbox and
    the link sends it again a little later (``CarMqttLink._resend_later``), a duplicate the server
    drops: needless work for a loaded fleet. So simulated cars wait longer.

    For the same reason their keep-alive is at least :data:`SIM_KEEPALIVE_S`. A car pings only
    after a keep-alive of silence (paho's ``loop_misc``, every ``MISC_INTERVAL_S`` here) and the
    broker drops it after 1.5 keep-alives: at the agent's 60 s a ping more than ~20 s late, a
    loop lag a 30,000-car launch reaches once the notices all arrive within seconds, and the
    broker dropped thousands of cars that then connected again and re-sent their outboxes
    (26,222 sessions made again, 22,853 duplicate reports, issue 19). At 180 s a lag up to 80 s
    is ridden out; cellular cars use keep-alives of minutes anyway (fewer radio wake-ups).

    And ``source_address``: paho binds every socket before connecting, to ``("", 0)`` by
    default, which makes each car's port unique on the whole machine, not per broker: one
    address has ~28,000 ephemeral ports, so 30,000 cars cannot all connect from it, however
    many brokers there are. A worker process gives its cars their own loopback address.
    """

    client_class = _SimClient

    def __init__(
        self,
        config: AgentConfig,
        on_sent: Callable[[StatusReport | ReportBatch | VersionManifest], None],
        source_address: str | None = None,
        *,
        upkeep: Housekeeping | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        options = replace(config.mqtt, keepalive=max(config.mqtt.keepalive, SIM_KEEPALIVE_S))
        super().__init__(config.vin, config.mqtt_url, options, tls_context=tls_context(config))
        self._on_sent = on_sent
        self._source_address = source_address
        self._upkeep = upkeep
        self._sessions = sessions or Sessions()
        self._ever_connected = False

    # The link's session, counted by the fleet as it starts and ends (CarMqttLink sets it).
    @property
    def _client(self) -> aiomqtt.Client | None:
        return self.__dict__.get("_session")

    @_client.setter
    def _client(self, client: aiomqtt.Client | None) -> None:
        before = self.__dict__.get("_session")
        self.__dict__["_session"] = client
        if before is None and client is not None:
            self._sessions.connected += 1
            if self._ever_connected:
                self._sessions.reconnects += 1
            self._ever_connected = True
        elif before is not None and client is None:
            self._sessions.connected -= 1

    @override
    def _new_client(self) -> aiomqtt.Client:
        client = super()._new_client()
        client.timeout = MQTT_OPERATION_TIMEOUT_S
        if isinstance(client, _SimClient):
            client.upkeep = self._upkeep
        if self._source_address:
            client._bind_address = self._source_address
        return client

    async def send(self, report: StatusReport | ReportBatch | VersionManifest) -> None:
        await super().send(report)
        self._on_sent(report)  # the fleet counts every status message: reports, batches and manifests


@dataclass
class _Car:
    """What outlives one agent of a car (a power cut starts a new agent on the same things)."""

    config: AgentConfig
    faults: CarFaults
    vehicle: FakeVehicle
    health: HealthCheck | None
    transport: Transport
    order: int = 0  # the car's position in the fleet: its blocking work goes before later cars'
    parked_later: bool = False
    cut: bool = False


class InProcessFleet:
    """The simulator's default :class:`simulator.scenario.FleetRunner`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        on_report: Callable[[StatusReport], None] | None = None,
        faults: FaultPlan | None = None,
        pacing: Pacing | None = None,
        source_address: str | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.source_address = source_address  # the cars' MQTT sockets bind here (see _CountingLink)
        self.agents: dict[str, Agent] = {}
        self.links: dict[str, CarMqttLink] = {}
        self.vehicles: dict[str, FakeVehicle] = {}
        self.faults = faults or FaultPlan()
        self.pacing = pacing or Pacing()
        self.car_faults: dict[str, CarFaults] = {}  # each car's faults, once started
        self._on_report = on_report
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._car_tasks: dict[str, asyncio.Task[None]] = {}
        self._cars: dict[str, _Car] = {}
        self._late: list[str] = []
        self._launched = False
        # One kept-alive connection per worker thread (slow cars' threads included), made on first use.
        self._http = StdlibTransport()
        self._slow_links: list[ThrottledTransport] = []
        self._sent: set[tuple[str, int, int, int, str]] = set()
        self._expected: tuple[tuple[int, bool], int] | None = None
        self._stats = FleetStats()
        # Every link's sessions, counted as they start and end; paho's housekeeping for all of them.
        self._sessions = Sessions()
        self._upkeep = Housekeeping(MISC_INTERVAL_S)

    # -- starting ---------------------------------------------------------------------

    def start(self, fleet: Fleet, agent_configs: list[dict[str, Any]]) -> None:
        self.start_configs(agent_configs)

    def start_configs(
        self, agent_configs: Sequence[Mapping[str, Any]], car_faults: Mapping[str, CarFaults] | None = None
    ) -> None:
        """Start every car of ``agent_configs`` (paced); ``car_faults`` overrides the plan's picks.

        A worker process gets its cars' faults from the parent, which picked them over the
        whole fleet so the counts stay exact.
        """
        vins = [str(doc["vin"]) for doc in agent_configs]
        self.car_faults = dict(car_faults) if car_faults is not None else self.faults.assign(vins)
        slow = sum(1 for vin in vins if self.car_faults.get(vin, NO_FAULTS).slow)
        threads = WORKER_THREADS + min(slow, SLOW_THREADS_MAX)
        self._loop.set_default_executor(DepthFirstExecutor(threads))
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start_all(agent_configs), self._loop)
        future.result()

    async def _probe_lag(self) -> None:
        """How late the loop wakes up: what every car's timers and sockets wait on top."""
        while True:
            before = self._loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            lag = self._loop.time() - before - LAG_PROBE_S
            if lag > self._stats.loop_lag_max_s:
                self._stats.loop_lag_max_s = round(lag, 3)

    async def _start_all(self, agent_configs: Sequence[Mapping[str, Any]]) -> None:
        transport = self._http
        self._stats.cars = len(agent_configs)
        self._tasks.append(asyncio.create_task(self._probe_lag()))
        self._tasks.append(asyncio.create_task(self._upkeep.run()))
        started = 0
        for doc in agent_configs:
            state_dir = self.state_dir / str(doc["vin"])
            options = identity_options(doc.get("identity") or {}, state_dir)
            config = config_from_agent_config(doc, state_dir=state_dir, durable=False, **options)
            faults = self.car_faults.get(config.vin, NO_FAULTS)
            car_transport: Transport = transport
            if faults.slow:
                throttled = ThrottledTransport(transport, self.faults.slow_bytes_per_second)
                self._slow_links.append(throttled)
                car_transport = throttled
                self._stats.slow_cars += 1
            vehicle = FakeVehicle()
            if faults.defer:
                vehicle.set(parked=False)
            car = _Car(config, faults, vehicle, self._health(faults), car_transport, order=len(self._cars))
            self._cars[config.vin] = car
            agent = self._new_agent(car)
            self._stats.created += 1
            if faults.late:
                self._late.append(config.vin)  # started once the campaign is launched
                continue
            delay = self.faults.offline_seconds if faults.offline else 0.0
            if delay is not None:  # None: an offline car that never comes
                self._launch(config.vin, agent, delay)
            started += 1
            if started % self.pacing.batch == 0:
                await asyncio.sleep(self.pacing.pause)

    def _new_agent(self, car: _Car) -> Agent:
        vin = car.config.vin
        link = _CountingLink(
            car.config, self._sent_report, self.source_address, upkeep=self._upkeep, sessions=self._sessions
        )
        agent = Agent(
            car.config,
            link=link,
            transport=car.transport,
            on_report=self._reporter(car),
            health=car.health,
            vehicle=car.vehicle,
            owner=LoggingOwnerHook(Consent.ACCEPT),
        )
        self.agents[vin] = agent
        self.links[vin] = link
        self.vehicles[vin] = car.vehicle
        return agent

    def _launch(self, vin: str, agent: Agent, delay: float = 0.0, *, late: bool = False) -> None:
        order = self._cars[vin].order if vin in self._cars else 0
        task = asyncio.create_task(self._run(agent, delay, late=late, order=order))
        self._car_tasks[vin] = task
        self._tasks.append(task)

    def launched(self) -> None:
        """The campaign is out: late joiners come ``late_seconds`` from now (paced like the rest)."""
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._launch_late(), self._loop).result(timeout=60)

    async def _launch_late(self) -> None:
        if self._launched:
            return
        self._launched = True
        for i, vin in enumerate(self._late):
            delay = self.faults.late_seconds + (i // self.pacing.batch) * self.pacing.pause
            self._launch(vin, self.agents[vin], delay, late=True)

    # -- faults -----------------------------------------------------------------------

    def _health(self, faults: CarFaults) -> HealthCheck | None:
        if not faults.fail:
            return None
        return FaultyHealth(HeaderHealthCheck(), self.faults.fail_times)

    def _reporter(self, car: _Car) -> Callable[[StatusReport], None] | None:
        """The caller's report callback, plus the car's faults that hang on a report.

        A deferring car parks ``defer_seconds`` after it deferred; a power-cut car loses
        power right after it journaled ``installing`` (the report callback runs just after
        that journal write, before the report is sent or the slot written).
        """
        if not (car.faults.defer or car.faults.power_cut):
            return self._on_report

        def on_report(report: StatusReport) -> None:
            if car.faults.defer and report.state is ReportState.DEFERRED and not car.parked_later:
                car.parked_later = True
                self._loop.call_later(self.faults.defer_seconds, lambda: car.vehicle.set(parked=True))
            if car.faults.power_cut and report.state is ReportState.INSTALLING and not car.cut:
                car.cut = True
                self._loop.call_soon(self._power_cut, car)
            if self._on_report is not None:
                self._on_report(report)

        return on_report

    def _power_cut(self, car: _Car) -> None:
        task = self._car_tasks.get(car.config.vin)
        if task is None or task.done():
            return
        self._stats.power_cuts += 1
        task.cancel()
        self._tasks.append(asyncio.create_task(self._restore_power(car, task)))

    async def _restore_power(self, car: _Car, old: asyncio.Task[None]) -> None:
        """After a power cut: a new agent on the same state directory, as a car that boots again."""
        await asyncio.gather(old, return_exceptions=True)
        await asyncio.sleep(self.faults.power_cut_seconds)
        try:
            agent = self._new_agent(car)
        except Exception:
            self._stats.errors += 1
            log.exception("%s: agent did not start again after a power cut", car.config.vin)
            return
        self._stats.restarts += 1
        self._launch(car.config.vin, agent)

    # -- counting -----------------------------------------------------------------------

    def _sent_report(self, message: StatusReport | ReportBatch | VersionManifest) -> None:
        stats = self._stats
        if isinstance(message, VersionManifest):
            stats.manifest_messages += 1  # the car's own state, no campaign step
            return
        stats.status_messages += 1
        stats.status_message_bytes += len(encode(message))
        if isinstance(message, ReportBatch) and message.manifest is not None:
            stats.manifests_in_batches += 1
        for report in message.reports if isinstance(message, ReportBatch) else (message,):
            key = (report.vin, report.campaign_id, report.attempt, report.deferrals, report.state.value)
            if key in self._sent:
                continue  # a re-sent outbox or a repeated terminal report: the server stores it once too
            self._sent.add(key)
            stats.reports_sent += 1
            stats.report_bytes += len(encode(report))
            stats.sent_by_state[report.state.value] = stats.sent_by_state.get(report.state.value, 0) + 1

    def expected_online(self) -> int:
        """Cars that should be connected now: all but those an offline fault keeps away, and late
        joiners until the launch."""
        if self._expected is None or self._expected[0] != (len(self.links), self._launched):
            count = 0
            for vin in self.links:
                faults = self.car_faults.get(vin, NO_FAULTS)
                if not faults.offline and (not faults.late or self._launched):
                    count += 1
            self._expected = ((len(self.links), self._launched), count)  # the snapshot runs twice a second
        return self._expected[1]

    async def _run(self, agent: Agent, delay: float = 0.0, *, late: bool = False, order: int = 0) -> None:
        CAR_ORDER.set(order)  # this task's context: the agent's own tasks and threads inherit it
        try:
            if delay:
                await asyncio.sleep(delay)  # an offline or late car: it comes later
            self._stats.started += 1
            if late:
                self._stats.late_joined += 1
            await agent.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._stats.errors += 1
            log.exception("%s: agent stopped", agent.config.vin)

    def connected(self) -> int:
        return self._sessions.connected

    def _snapshot(self) -> FleetStats:
        stats = FleetStats.from_json(self._stats.as_json())
        stats.sent_by_state = dict(self._stats.sent_by_state)
        stats.connected = self.connected()
        stats.reconnects = self._sessions.reconnects
        stats.expected_online = self.expected_online()
        stats.slow_bytes = sum(link.bytes for link in self._slow_links)
        stats.slow_seconds = round(sum(link.waited for link in self._slow_links), 3)
        return stats

    def stats(self) -> FleetStats:
        """A consistent snapshot (taken on the fleet's loop while it runs)."""
        if self._thread is None or not self._loop.is_running():
            return self._snapshot()

        async def snap() -> FleetStats:
            return self._snapshot()

        return asyncio.run_coroutine_threadsafe(snap(), self._loop).result(timeout=30)

    def wait_connected(self, timeout: float) -> int:
        """Block until every car holds its MQTT session (or raise after ``timeout`` seconds)."""
        deadline = self._loop.time() + timeout

        async def poll() -> int:
            while self._loop.time() < deadline:
                if self.connected() >= expected:
                    return self.connected()
                await asyncio.sleep(0.05)
            return self.connected()

        expected = self.expected_online()
        count = asyncio.run_coroutine_threadsafe(poll(), self._loop).result()
        if count < expected:
            raise SimulatorError(f"only {count} of {expected} cars connected within {timeout:.0f}s")
        return count

    # -- stopping -----------------------------------------------------------------------

    def stop(self) -> None:
        if self._thread is None:
            return

        async def cancel_all() -> None:
            while self._tasks:  # a power cut may add a task while others are cancelled
                tasks, self._tasks = self._tasks, []
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=120)
        self._stats = self._snapshot()  # keep the last counts once the loop is gone
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None
        # drop the MQTT clients while their loop still exists, then close it cleanly
        self.links.clear()
        self.agents.clear()
        self.vehicles.clear()
        self._cars.clear()
        self._car_tasks.clear()
        self._tasks.clear()
        gc.collect()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        self._http.close()
