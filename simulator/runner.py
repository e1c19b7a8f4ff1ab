"""Run many real agents in one process: one event loop in a background thread.

Each car is a real ``vehicle_agent.Agent`` with its own MQTT session, journal, TUF
metadata directories and file-backed A/B slots; they share one HTTP connection pool.
Connects are paced so a fleet does not arrive at the broker all at once. Each car has a
:class:`~vehicle_agent.vehicle.FakeVehicle` (ready unless a fault says otherwise) and an
owner who accepts; a :class:`~simulator.faults.FaultPlan` injects failures.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from firmware_bundles import provisioning
from firmware_bundles.messages import ReportState, StatusReport
from simulator.errors import SimulatorError
from simulator.faults import NO_FAULTS, CarFaults, FaultPlan, FaultyHealth
from simulator.fleet import Fleet
from vehicle_agent.agent import Agent
from vehicle_agent.config import DownloadLimits, config_from_agent_config
from vehicle_agent.health import HeaderHealthCheck, HealthCheck
from vehicle_agent.link import MqttLink, tls_context
from vehicle_agent.owner import Consent, LoggingOwnerHook
from vehicle_agent.transport import HttpxTransport, make_http_client
from vehicle_agent.vehicle import FakeVehicle

log = logging.getLogger(__name__)

CONNECT_BATCH = 100
CONNECT_PAUSE = 0.05
WORKER_THREADS = 16


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


class InProcessFleet:
    """The simulator's default :class:`simulator.scenario.FleetRunner`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        on_report: Callable[[StatusReport], None] | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.agents: dict[str, Agent] = {}
        self.links: dict[str, MqttLink] = {}
        self.vehicles: dict[str, FakeVehicle] = {}
        self.faults = faults or FaultPlan()
        self.car_faults: dict[str, CarFaults] = {}  # each car's faults, once started
        self._on_report = on_report
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http = make_http_client(DownloadLimits(), max_connections=50)

    def start(self, fleet: Fleet, agent_configs: list[dict[str, Any]]) -> None:
        self._loop.set_default_executor(ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="car-io"))
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start_all(agent_configs), self._loop)
        future.result()

    async def _start_all(self, agent_configs: list[dict[str, Any]]) -> None:
        transport = HttpxTransport(self._http)
        self.car_faults = self.faults.assign([doc["vin"] for doc in agent_configs])
        for i, doc in enumerate(agent_configs):
            state_dir = self.state_dir / doc["vin"]
            options = identity_options(doc.get("identity") or {}, state_dir)
            config = config_from_agent_config(doc, state_dir=state_dir, durable=False, **options)
            link = MqttLink(config.vin, config.mqtt_url, config.mqtt, tls_context=tls_context(config))
            faults = self.car_faults.get(config.vin, NO_FAULTS)
            vehicle = FakeVehicle()
            if faults.defer:
                vehicle.set(parked=False)
            agent = Agent(
                config,
                link=link,
                transport=transport,
                on_report=self._reporter(vehicle, faults),
                health=self._health(faults),
                vehicle=vehicle,
                owner=LoggingOwnerHook(Consent.ACCEPT),
            )
            self.agents[config.vin] = agent
            self.links[config.vin] = link
            self.vehicles[config.vin] = vehicle
            delay = self.faults.offline_seconds if faults.offline else 0.0
            if delay is not None:  # None: an offline car that never comes
                self._tasks.append(asyncio.create_task(self._run(agent, delay)))
            if (i + 1) % CONNECT_BATCH == 0:
                await asyncio.sleep(CONNECT_PAUSE)

    def _health(self, faults: CarFaults) -> HealthCheck | None:
        if not faults.fail:
            return None
        return FaultyHealth(HeaderHealthCheck(), self.faults.fail_times)

    def _reporter(self, vehicle: FakeVehicle, faults: CarFaults) -> Callable[[StatusReport], None] | None:
        """The caller's report callback; a deferring car parks ``defer_seconds`` after it deferred."""
        if not faults.defer:
            return self._on_report
        parked_later = False

        def on_report(report: StatusReport) -> None:
            nonlocal parked_later
            if report.state is ReportState.DEFERRED and not parked_later:
                parked_later = True
                self._loop.call_later(self.faults.defer_seconds, lambda: vehicle.set(parked=True))
            if self._on_report is not None:
                self._on_report(report)

        return on_report

    def expected_online(self) -> int:
        """Cars that should be connected now: all but those an offline fault keeps away."""
        return sum(1 for vin in self.links if not self.car_faults.get(vin, NO_FAULTS).offline)

    async def _run(self, agent: Agent, delay: float = 0.0) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)  # an offline fault: this car comes late
            await agent.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: agent stopped", agent.config.vin)

    def connected(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

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

    def stop(self) -> None:
        if self._thread is None:
            return

        async def cancel_all() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None
        # drop the MQTT clients while their loop still exists, then close it cleanly
        self.links.clear()
        self.agents.clear()
        self.vehicles.clear()
        self._tasks.clear()
        gc.collect()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        self._http.close()
