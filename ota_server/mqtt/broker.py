"""The embedded MQTT broker (amqtt) for a machine with nothing configured.

It listens on 127.0.0.1 and a free port (1883 may belong to a system broker).
Anonymous login is switched off on purpose: amqtt queues QoS 1 messages for an
offline persistent session only when the session has a username, so every
client (server and cars) connects with one; any username is accepted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": -1}},
        "timeout_disconnect_delay": 0,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
    }


def _broker_class() -> Any:
    """amqtt's Broker with its connect-time retained-message scan made safe and linear.

    On every CONNECT, amqtt 0.12 walks *every* subscription in the broker and scans all
    retained messages for each one, awaiting inside the walk: O(subscriptions x retained)
    per connect, and "dictionary changed size during iteration" when cars subscribe
    meanwhile (seen with 1,000 cars). Here the scan is done only for filters this
    session really holds, and in the background, so the walk never yields.
    """
    from amqtt.broker import Broker  # imported late: amqtt is heavy and only needed here

    class SafeBroker(Broker):  # type: ignore[misc]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            holders = self._subscriptions.get(subscription[0], ())
            if not any(holder is session for holder, _qos in holders):
                return
            task = asyncio.ensure_future(super()._publish_retained_messages_for_subscription(subscription, session))
            _background.add(task)
            task.add_done_callback(_background.discard)

    return SafeBroker


_background: set[asyncio.Future[None]] = set()


class EmbeddedBroker:
    """amqtt in this process. ``port_file``: the port is remembered there and taken again on the next
    start, so cars set up with the broker's URL find it after a restart (another port only if it is taken)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, port_file: Path | None = None) -> None:
        self._host = host
        self._port = port
        self._port_file = port_file
        self._broker: Any = None

    @property
    def url(self) -> str:
        if self._broker is None:
            raise RuntimeError("the embedded broker is not running")
        return f"mqtt://{self._host}:{self._port}"

    def _last_port(self) -> int:
        """The port of the last start (0: none, or the file unreadable)."""
        if self._port_file is None:
            return 0
        try:
            port = int(self._port_file.read_text().strip())
        except (OSError, ValueError):
            return 0
        return port if 0 < port < 65536 else 0

    async def start(self) -> str:
        """Start on the given port, or the last start's, or a free one (retrying if another process takes it first)."""
        if not self._port and (last := self._last_port()):
            try:
                return await self._start_on(last, attempts=1)
            except Exception as exc:
                log.warning(
                    "the embedded MQTT broker's port from the last start, %d, is not free (%s): using another; "
                    "cars set up with mqtt://%s:%d must be given the new URL",
                    last,
                    exc,
                    self._host,
                    last,
                )
        return await self._start_on(self._port, attempts=1 if self._port else 5)

    async def _start_on(self, wanted: int, *, attempts: int) -> str:
        broker_class = _broker_class()
        for attempt in range(attempts):
            port = wanted or free_port(self._host)
            broker = broker_class(broker_config(self._host, port))
            try:
                await broker.start()
            except Exception:
                if attempt == attempts - 1:
                    raise
                log.info("port %d was taken before the broker bound it; trying another", port)
                continue
            self._broker, self._port = broker, port
            if self._port_file is not None:
                self._port_file.parent.mkdir(parents=True, exist_ok=True)
                self._port_file.write_text(f"{port}\n")
            log.info("embedded MQTT broker listening on %s", self.url)
            return self.url
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
