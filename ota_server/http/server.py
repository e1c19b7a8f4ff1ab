"""Running the whole server: HTTP socket, optional embedded broker, uvicorn, graceful stop.

The HTTP socket is bound here and handed to uvicorn so the real port is known
before anything is advertised (no race between "pick a port" and "bind it").
:class:`OtaServer` is what ``ota serve`` runs, and what a test or the demo can
run in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

import uvicorn

from ota_server.clock import Clock, utc_now
from ota_server.config import DEFAULT_PORT, Settings
from ota_server.errors import NotReady
from ota_server.http.app import create_app
from ota_server.infra import gctime
from ota_server.mqtt.broker import EmbeddedBroker
from ota_server.mqtt.publisher import Publisher
from ota_server.web import event_streams

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 75  # idle seconds before the server closes a kept-alive HTTP connection

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServerInfo:
    api_url: str
    docs_url: str
    mqtt_url: str
    repo_url: str

    def ready_json(self) -> str:
        return json.dumps(
            {"api_url": self.api_url, "mqtt_url": self.mqtt_url, "repo_url": self.repo_url, "pid": os.getpid()}
        )


def bind_socket(host: str, port: int | None) -> socket.socket:
    """Bind ``host:port``; ``None`` means 8000 if free, else any free port; 0 means any free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [DEFAULT_PORT, 0] if port is None else [port]
    for index, candidate in enumerate(candidates):
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
        # for sockets that say they are TCP; without it every keep-alive response waits
        # ~40 ms for Nagle and the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError:
            sock.close()
            if index == len(candidates) - 1:
                raise
            log.info("port %d is taken; using a free port instead", candidate)
            continue
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock
    raise AssertionError("unreachable")


def write_ready_file(path: Path, info: ServerInfo) -> None:
    """Write atomically: whoever polls for the file never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(info.ready_json())
    os.replace(tmp, path)


def remove_ready_file(path: Path) -> None:
    path.unlink(missing_ok=True)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: :class:`OtaServer` owns shutdown."""

    def __init__(self, config: uvicorn.Config, *, before_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self._before_shutdown = before_shutdown

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Endless responses (dashboard event streams) end first, or the graceful stop waits for them.
        self._before_shutdown()
        await super().shutdown(sockets)


class OtaServer:
    """The server with its broker; ``async with OtaServer(settings) as info: ...``."""

    def __init__(self, settings: Settings, *, publisher: Publisher | None = None, clock: Clock = utc_now) -> None:
        self._settings = settings
        self._publisher = publisher
        self._clock = clock
        self._broker: EmbeddedBroker | None = None
        self._uvicorn: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.settings = settings

    def _resolved(self, port: int, mqtt_url: str | None) -> Settings:
        public_url = self._settings.public_url
        if not public_url:
            host = "127.0.0.1" if self._settings.host in _WILDCARD_HOSTS else self._settings.host
            host = f"[{host}]" if ":" in host else host
            public_url = f"http://{host}:{port}"
        if self._broker is not None:  # amqtt speaks MQTT 3.1.1 only, and there is one replica
            return replace(
                self._settings, port=port, mqtt_url=mqtt_url, public_url=public_url, mqtt_version=4, mqtt_share_group=""
            )
        return replace(self._settings, port=port, mqtt_url=mqtt_url, public_url=public_url)

    async def start(self, timeout_s: float = 60.0) -> ServerInfo:
        self._sock = bind_socket(self._settings.host, self._settings.port)
        port = self._sock.getsockname()[1]
        mqtt_url = self._settings.mqtt_url
        if not mqtt_url and self._publisher is None:
            self._broker = EmbeddedBroker("127.0.0.1", port_file=self._settings.data_dir / "embedded-broker-port")
            mqtt_url = await self._broker.start()
        self.settings = self._resolved(port, mqtt_url)
        app = create_app(self.settings, publisher=self._publisher, clock=self._clock)
        debug = self.settings.log_level.upper() == "DEBUG"
        # Cars fetch ~10 files a campaign over one kept-alive connection, minutes apart under load:
        # uvicorn's 5 s idle limit made them reconnect (a handshake and a new protocol) per file.
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=debug,
            lifespan="on",
            timeout_graceful_shutdown=10,
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        self._uvicorn = _Uvicorn(config, before_shutdown=event_streams(app).close_all)
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[self._sock]), name="ota-uvicorn")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._uvicorn.started:
            if self._task.done() or loop.time() > deadline:
                await self.stop()
                raise NotReady("the server did not start; see the log above")
            await asyncio.sleep(0.02)
        base = self.settings.resolved_public_url
        return ServerInfo(
            api_url=base, docs_url=f"{base}/docs", mqtt_url=mqtt_url or "", repo_url=self.settings.repo_url
        )

    def request_stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task

    async def stop(self) -> None:
        """Graceful: uvicorn drains requests, the lifespan flushes ingest, then the broker stops."""
        self.request_stop()
        await self.wait()
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> ServerInfo:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve_forever(settings: Settings, ready_file: Path | None = None) -> ServerInfo:
    """Run until SIGTERM/SIGINT; what ``ota serve`` does. Returns the info it served with."""
    server = OtaServer(settings)
    info = await server.start()
    # What start-up built (modules, the app, the runtime) lives as long as the process: the
    # cyclic collector need not walk it again, and runs less often (ota_gc_seconds_total).
    gctime.settle()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)
    print(
        f"OTA server ready\n  API:  {info.api_url}\n  docs: {info.docs_url}\n  MQTT: {info.mqtt_url}\n"
        f"  dashboard: {info.api_url}/ui/ (sign in with an API token)\n  owners' recall check: {info.api_url}/lookup",
        flush=True,
    )
    if ready_file is not None:
        write_ready_file(ready_file, info)
    try:
        await server.wait()
    finally:
        await server.stop()
        if ready_file is not None:
            remove_ready_file(ready_file)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return info
