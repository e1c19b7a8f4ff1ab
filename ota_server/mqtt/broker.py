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
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._broker: Any = None

    @property
    def url(self) -> str:
        if self._broker is None:
            raise RuntimeError("the embedded broker is not running")
        return f"mqtt://{self._host}:{self._port}"

    async def start(self) -> str:
        """Start on the given port, or on a free one (retrying if another process takes it first)."""
        broker_class = _broker_class()
        attempts = 1 if self._port else 5
        for attempt in range(attempts):
            port = self._port or free_port(self._host)
            broker = broker_class(broker_config(self._host, port))
            try:
                await broker.start()
            except Exception:
                if attempt == attempts - 1:
                    raise
                log.info("port %d was taken before the broker bound it; trying another", port)
                continue
            self._broker, self._port = broker, port
            log.info("embedded MQTT broker listening on %s", self.url)
            return self.url
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
