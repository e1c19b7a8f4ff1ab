"""The server's MQTT client: one persistent session, a reconnect loop, and the Publisher for notices.

Incoming status and presence messages go straight to a callback (the ingestor's
``submit``), which never blocks and never raises, so a bad message cannot stop
the loop. The session is persistent (``clean_session`` off by default) so
reports sent while the server restarts are queued by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt

from firmware_bundles import topics
from ota_server.config import Settings
from ota_server.errors import InvalidInput, NotReady

log = logging.getLogger(__name__)

OnMessage = Callable[[str, bytes], None]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for mqtts://: the CA that signed the broker, and our own client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidInput("MQTT TLS: set both the client certificate and its key, or neither")
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file is not None:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"MQTT TLS files unusable: {exc}") from exc
        return context


def tls_files(settings: Settings) -> TlsFiles:
    return TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


class MqttLink:
    def __init__(
        self,
        url: str,
        on_message: OnMessage,
        *,
        client_id: str,
        username: str,
        password: str | None = None,
        clean_session: bool = False,
        connect_timeout_s: float = 30.0,
        tls: TlsFiles | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise InvalidInput(f"MQTT URL must look like mqtt://host:port, got {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._tls = (tls or TlsFiles()).context() if parts.scheme == "mqtts" else None
        self._username = parts.username or username
        self._password = parts.password or password
        self._client_id = client_id
        self._clean_session = clean_session
        self._on_message = on_message
        self._connect_timeout_s = connect_timeout_s
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _new_client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=self._username,
            password=self._password,
            identifier=self._client_id,
            clean_session=self._clean_session,
            tls_context=self._tls,
            max_inflight_messages=100,
            keepalive=30,
        )
        # notices are published with bounded concurrency; no need to warn per queued call
        client.pending_calls_threshold = 100_000
        return client

    async def _session(self) -> None:
        async with self._new_client() as client:
            await client.subscribe(
                [(topics.STATUS_SUBSCRIPTION, topics.QOS), (topics.PRESENCE_SUBSCRIPTION, topics.QOS)]
            )
            self._client = client
            self._connected.set()
            log.info("MQTT connected to %s:%d as %s", self._host, self._port, self._client_id)
            async for message in client.messages:
                try:
                    self._on_message(str(message.topic), _payload_bytes(message.payload))
                except Exception:  # the callback should never raise; if it does, keep listening
                    log.exception("handling a message on %s failed", message.topic)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.warning("MQTT link to %s:%d down: %s; reconnecting in %.1fs", self._host, self._port, exc, delay)
            except Exception:
                log.exception("MQTT link to %s:%d failed; reconnecting in %.1fs", self._host, self._port, delay)
            finally:
                self._connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def start(self, wait_s: float | None = None) -> None:
        """Start the loop; with ``wait_s``, also wait that long for the first connection."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ota-mqtt-link")
        if wait_s is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout_s)
        except TimeoutError as exc:
            raise NotReady(f"MQTT broker {self._host}:{self._port} unreachable") from exc
        client = self._client
        if client is None:
            raise NotReady("MQTT link reconnecting")
        await client.publish(topic, payload, qos=qos, retain=retain, timeout=self._connect_timeout_s)
