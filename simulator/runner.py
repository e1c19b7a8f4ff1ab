"""Run many real agents in one process: one event loop in a background thread.

Each car is a real ``vehicle_agent.Agent`` with its own MQTT session, journal, TUF
metadata directories and file-backed A/B slots; they share one HTTP connection pool.
Connects are paced so a fleet does not arrive at the broker all at once.
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
from firmware_bundles.messages import StatusReport
from simulator.errors import SimulatorError
from simulator.fleet import Fleet
from vehicle_agent.agent import Agent
from vehicle_agent.config import DownloadLimits, config_from_agent_config
from vehicle_agent.link import MqttLink, tls_context
from vehicle_agent.transport import HttpxTransport, make_http_client

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

    def __init__(self, state_dir: Path, *, on_report: Callable[[StatusReport], None] | None = None) -> None:
        self.state_dir = state_dir
        self.agents: dict[str, Agent] = {}
        self.links: dict[str, MqttLink] = {}
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
        for i, doc in enumerate(agent_configs):
            state_dir = self.state_dir / doc["vin"]
            options = identity_options(doc.get("identity") or {}, state_dir)
            config = config_from_agent_config(doc, state_dir=state_dir, durable=False, **options)
            link = MqttLink(config.vin, config.mqtt_url, config.mqtt, tls_context=tls_context(config))
            agent = Agent(config, link=link, transport=transport, on_report=self._on_report)
            self.agents[config.vin] = agent
            self.links[config.vin] = link
            self._tasks.append(asyncio.create_task(self._run(agent)))
            if (i + 1) % CONNECT_BATCH == 0:
                await asyncio.sleep(CONNECT_PAUSE)

    async def _run(self, agent: Agent) -> None:
        try:
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
                if self.connected() == len(self.links):
                    return len(self.links)
                await asyncio.sleep(0.05)
            return self.connected()

        count = asyncio.run_coroutine_threadsafe(poll(), self._loop).result()
        if count < len(self.links):
            raise SimulatorError(f"only {count} of {len(self.links)} cars connected within {timeout:.0f}s")
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
        self._tasks.clear()
        gc.collect()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
        self._http.close()
