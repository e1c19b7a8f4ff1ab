"""The server's MQTT client: one persistent session, a reconnect loop, and the Publisher for notices.

Incoming status and presence messages go straight to a callback (the ingestor's
``submit``), which never blocks and never raises, so a bad message cannot stop
the loop. The session is persistent so reports sent while the server restarts are
queued by the broker.

Against a real broker (MQTT v5, the default) the link also

* subscribes through a shared subscription ``$share/<group>/...`` (``mqtt_share_group``),
  so N replicas split the report stream, each message going to one of them;
* acknowledges a report only once the callback says it is stored (manual PUBACK): the
  callback gets an ``ack`` and returns True when it will call it later (after the
  database commit), False when the link may acknowledge at once (rejected). A replica
  killed with reports in memory never acknowledged them, so the broker hands them to
  its session again when it reconnects. Receive Maximum bounds how many unacknowledged
  reports the broker sends at once: the broker queues the rest (backpressure while the
  database is away).

The embedded amqtt broker speaks MQTT 3.1.1 only: there (one replica) the link
subscribes plainly and paho acknowledges on receipt.

Mosquitto (2.0) does not keep shared subscriptions over its own restart: the sessions come
back without them, and a report a car publishes before a replica has subscribed again has
no subscriber and is dropped. With ``share_guard_s`` > 0 each replica's session also holds
a plain subscription to the same topics (persisted, so the broker queues what arrives in
that gap for every replica), told apart by its subscription identifier: its copies are
ingested only during the first ``share_guard_s`` seconds of a session (the backlog; the
duplicates that overlap are dropped by ingest) and acknowledged unread afterwards. It costs
one extra delivery per replica and message; a broker that keeps shared subscriptions
(EMQX, a cluster) does not need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.client import CallbackOnPublish_v2, MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware_bundles import topics
from ota_server.config import Settings
from ota_server.errors import InvalidInput, NotReady
from ota_server.infra.tasks import stop_task
from ota_server.mqtt.pubacks import read_pubacks_lean

log = logging.getLogger(__name__)

Ack = Callable[[], None]
# (topic, payload, ack) -> True when the callee calls ``ack`` itself once the message is
# stored; False (or None) when the link may acknowledge at once.
OnMessage = Callable[[str, bytes, Ack], bool | None]

MQTT_V311 = 4
MQTT_V5 = 5
SHARED_SUBSCRIPTION_ID = 1
# Short: under uvloop a broker that goes away can be missed until the keepalive runs out
# (seen once in the broker-restart scenario: 50 s with 30), and the server is one client.
KEEPALIVE_S = 10
# paho's own bound on unacknowledged QoS 1 publishes: none (0). The notice dispatcher bounds
# them (``OTA_NOTICE_CONCURRENCY``); with paho's bound set (it was 1,000) paho re-scanned every
# message in flight at each PUBACK, ~4 s of the event loop per 30,000 notices (issue 19).
MAX_INFLIGHT = 0
# A batch of publishes (:meth:`ServerMqttLink.publish_many`) gives the loop a turn after this many
# and looks for PUBACKs this often (paho marks each message as the loop reads its PUBACK).
_BATCH_YIELD_EVERY = 200
_BATCH_ACK_POLL_S = 0.005
GUARD_SUBSCRIPTION_ID = 2
_TAKEN_OVER = "taken over"  # v5 reason 142 "Session taken over": the same client id connected elsewhere
_REFUSED = "refused by the broker"
_NOT_SENT = "not sent (no connection)"
_NOT_ACKNOWLEDGED = "not acknowledged"
_NOT_REFUSED = (None, _NOT_SENT, _NOT_ACKNOWLEDGED)  # a batch's outcomes that are not the broker's refusal


class Refused(NotReady):
    """The broker answered a publish with a failure reason (v5 PUBACK 0x80 or above: not authorized,
    quota exceeded, ...): it does not have the message; the caller may retry."""


class _Acknowledgements:
    """One session's PUBACKs as the broker gave them: the single publishes waiting for theirs, and the
    refusals (v5 reason 0x80 and above) of the others, by message id, each taken once.

    paho (and aiomqtt) mark a QoS 1 publish done at its PUBACK whatever the PUBACK says, so a notice
    the broker refused (an ACL that does not let the server publish there, a quota) was recorded as
    published and never sent again. This wraps the session's ``on_publish`` (run on the event loop,
    where aiomqtt reads the socket) to keep what each PUBACK said.
    """

    def __init__(self, paho: mqtt.Client) -> None:
        self._refused: dict[int, str] = {}
        self._waiting: dict[int, asyncio.Future[str | None]] = {}
        delivered = cast(CallbackOnPublish_v2 | None, paho.on_publish)  # aiomqtt's, on paho's version 2 API

        def on_publish(client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties) -> None:
            refused = str(reason) if reason.is_failure else None
            waiter = self._waiting.pop(mid, None)
            if waiter is not None:
                if not waiter.done():
                    waiter.set_result(refused)
            elif refused is not None:
                self._refused[mid] = refused
            if delivered is not None:
                delivered(client, userdata, mid, reason, props)

        paho.on_publish = on_publish

    def take(self, mid: int) -> str | None:
        """Why the broker refused message ``mid`` (None: it did not), forgotten once read; noted before
        paho marks the message published."""
        return self._refused.pop(mid, None)

    def answer(self, mid: int) -> asyncio.Future[str | None]:
        """Resolved with the refusal of message ``mid`` (None: accepted) when its PUBACK comes."""
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting[mid] = waiter
        return waiter

    def forget(self, mid: int) -> None:
        self._waiting.pop(mid, None)


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


def link_from_settings(settings: Settings, on_message: OnMessage) -> ServerMqttLink:
    """The link ``settings`` describe (``mqtt_url`` must be set)."""
    if not settings.mqtt_url:
        raise InvalidInput("no MQTT broker: set mqtt_url (OTA_MQTT_URL)")
    return ServerMqttLink(
        settings.mqtt_url,
        on_message,
        client_id=settings.mqtt_client_id,
        username=settings.mqtt_username,
        password=settings.mqtt_password,
        clean_session=settings.mqtt_clean_session,
        tls=tls_files(settings),
        version=settings.mqtt_version,
        share_group=settings.mqtt_share_group,
        session_expiry_s=settings.mqtt_session_expiry_s,
        receive_maximum=settings.mqtt_receive_maximum,
        share_guard_s=settings.mqtt_share_guard_s,
    )


def shared(group: str, topic_filter: str) -> str:
    """``$share/<group>/<filter>``: the broker hands each message to one member of ``group``."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def _no_ack() -> None:
    return None


class ServerMqttLink:
    """The server's one MQTT session (cars' status and presence in, notices out); the car's side is
    ``vehicle_agent.link.CarMqttLink``."""

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
        version: int = MQTT_V311,
        share_group: str = "",
        session_expiry_s: int = 86_400,
        receive_maximum: int = 1000,
        share_guard_s: float = 0.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise InvalidInput(f"MQTT URL must look like mqtt://host:port, got {url!r}")
        if version not in (MQTT_V311, MQTT_V5):
            raise InvalidInput(f"MQTT version must be 4 (3.1.1) or 5, got {version}")
        if share_group and version != MQTT_V5:
            raise InvalidInput("shared subscriptions need MQTT v5 (OTA_MQTT_VERSION=5)")
        if share_group and any(c in share_group for c in "/+#"):
            raise InvalidInput(f"MQTT share group must not contain '/', '+' or '#': {share_group!r}")
        if not 1 <= receive_maximum <= 65_535:
            raise InvalidInput("MQTT receive maximum must be within 1..65535")
        self._host = parts.hostname
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self._tls = (tls or TlsFiles()).context() if parts.scheme == "mqtts" else None
        self._username = parts.username or username
        self._password = parts.password or password
        self._client_id = client_id
        self._clean_session = clean_session
        self._on_message = on_message
        self._connect_timeout_s = connect_timeout_s
        self._version = version
        self._share_group = share_group
        self._session_expiry_s = 0 if clean_session else session_expiry_s
        self._receive_maximum = receive_maximum
        self._guard_s = share_guard_s if share_group else 0.0
        self._guard_until = 0.0
        self._client: aiomqtt.Client | None = None
        self._acks: weakref.WeakKeyDictionary[aiomqtt.Client, _Acknowledgements] = weakref.WeakKeyDictionary()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connects = 0
        self.received = 0  # messages handed to the callback (a replica's share of the stream)
        self.guard_ingested = 0  # copies through the guard subscription handed on (the gap's backlog)
        self.guard_skipped = 0  # ... and acknowledged unread (the shared subscription delivered them)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def manual_ack(self) -> bool:
        """v5: a report is acknowledged to the broker only once stored."""
        return self._version == MQTT_V5

    @property
    def subscriptions(self) -> list[str]:
        return [shared(self._share_group, t) for t in (topics.STATUS_SUBSCRIPTION, topics.PRESENCE_SUBSCRIPTION)]

    def _new_client(self) -> aiomqtt.Client:
        if self._version == MQTT_V5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self._session_expiry_s
            properties.ReceiveMaximum = self._receive_maximum
            client = aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                identifier=self._client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=self._clean_session,  # never "first only": every session here is a new Client
                properties=properties,
                tls_context=self._tls,
                max_inflight_messages=MAX_INFLIGHT,
                keepalive=KEEPALIVE_S,
            )
        else:
            client = aiomqtt.Client(
                self._host,
                self._port,
                username=self._username,
                password=self._password,
                identifier=self._client_id,
                clean_session=self._clean_session,
                tls_context=self._tls,
                max_inflight_messages=MAX_INFLIGHT,
                keepalive=KEEPALIVE_S,
            )
        # aiomqtt does not expose paho's manual acknowledgement; the paho client is its _client.
        client._client.manual_ack_set(self.manual_ack)
        read_pubacks_lean(client._client, self._version)  # half the CPU of publishing a launch's notices
        self._acks[client] = _Acknowledgements(client._client)
        return client

    def _acker(self, client: aiomqtt.Client, message: aiomqtt.Message) -> Ack:
        """Acknowledge ``message`` on the session that received it (call on the event loop).

        After a reconnect the old session's acknowledgements are dropped: the broker sends
        those messages again (marked duplicate) and the ingestor counts them as duplicates.
        """
        if not self.manual_ack or message.qos == 0:
            return _no_ack
        mid, qos, paho = message.mid, message.qos, client._client
        done = False

        def ack() -> None:
            nonlocal done
            if done or self._client is not client:
                return
            done = True
            paho.ack(mid, qos)

        return ack

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        wanted = [(topic, topics.QOS) for topic in self.subscriptions]
        if not self._guard_s:
            await client.subscribe(wanted)
            return
        plain = [(t, topics.QOS) for t in (topics.STATUS_SUBSCRIPTION, topics.PRESENCE_SUBSCRIPTION)]
        for identifier, filters in ((SHARED_SUBSCRIPTION_ID, wanted), (GUARD_SUBSCRIPTION_ID, plain)):
            properties = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            properties.SubscriptionIdentifier = identifier
            await client.subscribe(filters, properties=properties)

    def _skip_guard_copy(self, message: aiomqtt.Message) -> bool:
        """A copy through the guard subscription, outside the window after connecting: not needed."""
        if not self._guard_s:
            return False
        ids = getattr(message.properties, "SubscriptionIdentifier", None) or []
        if GUARD_SUBSCRIPTION_ID not in ids or SHARED_SUBSCRIPTION_ID in ids:
            return False
        if asyncio.get_running_loop().time() < self._guard_until:
            self.guard_ingested += 1
            return False
        self.guard_skipped += 1
        return True

    async def _session(self) -> None:
        async with self._new_client() as client:
            self._guard_until = asyncio.get_running_loop().time() + self._guard_s
            await self._subscribe(client)
            self._client = client
            self.connects += 1
            self._connected.set()
            log.info(
                "MQTT connected to %s:%d as %s (v%s%s)",
                self._host,
                self._port,
                self._client_id,
                "5" if self._version == MQTT_V5 else "3.1.1",
                f", shared group {self._share_group}" if self._share_group else "",
            )
            async for message in client.messages:
                ack = self._acker(client, message)
                if self._skip_guard_copy(message):
                    ack()
                    continue
                self.received += 1
                try:
                    queued = self._on_message(str(message.topic), _payload_bytes(message.payload), ack)
                except Exception:  # the callback should never raise; if it does, keep listening
                    log.exception("handling a message on %s failed", message.topic)
                    queued = False
                if not queued:
                    ack()

    async def _run(self) -> None:
        delay = 0.5
        while True:
            connects = self.connects
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                hint = ""
                if _TAKEN_OVER in str(exc).lower():
                    hint = f" (another process connected as {self._client_id!r}: one OTA_MQTT_CLIENT_ID per replica)"
                log.warning(
                    "MQTT link to %s:%d down: %s%s; reconnecting in %.1fs", self._host, self._port, exc, hint, delay
                )
            except Exception:
                log.exception("MQTT link to %s:%d failed; reconnecting in %.1fs", self._host, self._port, delay)
            finally:
                self._connected.clear()
                self._client = None
            if self.connects != connects:
                delay = 0.5  # it was up: start the backoff again
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
            await stop_task(self._task)
            self._task = None

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        """Return once the broker has the message; raise :class:`NotReady` when it cannot be sent or is
        not acknowledged in time, :class:`Refused` when the broker refuses it."""
        if not self._connected.is_set():
            try:
                await asyncio.wait_for(self._connected.wait(), self._connect_timeout_s)
            except TimeoutError as exc:
                raise NotReady(f"MQTT broker {self._host}:{self._port} unreachable") from exc
        client = self._client
        if client is None:
            raise NotReady("MQTT link reconnecting")
        acks = self._acks[client]
        info = client._client.publish(topic, payload, qos, retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotReady(f"{topic}: {_NOT_SENT}")
        if qos == 0:
            return
        answer = acks.answer(info.mid)  # no PUBACK is read before this coroutine waits
        try:
            refused = await asyncio.wait_for(answer, self._connect_timeout_s)
        except TimeoutError as exc:
            acks.forget(info.mid)
            raise NotReady(f"{topic}: {_NOT_ACKNOWLEDGED} in {self._connect_timeout_s:.0f} s") from exc
        if refused is not None:
            raise Refused(f"{topic}: {_REFUSED}: {refused}")

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int, retain: bool, in_flight: int
    ) -> list[bool]:
        """A batch of publishes straight through paho, at most ``in_flight`` unacknowledged at once;
        per message, whether the broker has it. Never raises, never waits for a connection: what is
        not acknowledged (the link down or reconnected, nothing acknowledged for ``connect_timeout_s``)
        or refused (a v5 PUBACK with a failure reason, logged) is the caller's to retry.

        A launch's notices: ``aiomqtt``'s publish made an event, a ``wait_for`` task and a scan of
        every pending call for each message, ~40% of the event loop while 30,000 cars were being
        notified (issue 19); here each message is one paho call, its acknowledgement read from the
        ``MQTTMessageInfo`` paho marks.
        """
        outcome = await self._publish_batch(messages, qos=qos, retain=retain, in_flight=in_flight)
        refused = [why for why in outcome if why not in _NOT_REFUSED]
        if refused:
            log.warning(
                "the broker refused %d of %d messages: %s (the first's reason)", len(refused), len(messages), refused[0]
            )
        return [why is None for why in outcome]

    async def _publish_batch(
        self, messages: Sequence[tuple[str, bytes]], *, qos: int, retain: bool, in_flight: int
    ) -> list[str | None]:
        """Per message: None when the broker has it, its reason when it refused it, else
        ``_NOT_SENT`` or ``_NOT_ACKNOWLEDGED``."""
        outcome: list[str | None] = [_NOT_SENT] * len(messages)
        client = self._client
        if client is None or not self._connected.is_set():
            return outcome
        in_flight = max(1, in_flight)
        paho = client._client  # aiomqtt keeps its paho client there (as for manual_ack_set)
        acks = self._acks[client]
        loop = asyncio.get_running_loop()
        # Sent, not yet seen acknowledged, in the order sent: the broker acknowledges a session's
        # QoS 1 messages in order, so each look takes the acknowledged ones off the front.
        waiting: deque[tuple[int, MQTTMessageInfo]] = deque()

        def take_acknowledged() -> bool:
            took = False
            while waiting and waiting[0][1].is_published():
                index, info = waiting.popleft()
                outcome[index] = acks.take(info.mid)
                took = True
            return took

        def settled() -> list[str | None]:  # an early return: what was acknowledged is not sent again
            for index, info in waiting:
                outcome[index] = acks.take(info.mid) if info.is_published() else _NOT_ACKNOWLEDGED
            return outcome

        sent, progress = 0, loop.time()
        while sent < len(messages) or waiting:
            while sent < len(messages) and len(waiting) < in_flight:
                topic, payload = messages[sent]
                info = paho.publish(topic, payload, qos, retain)
                if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                    return settled()  # the session is gone; what it had not acknowledged is retried
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    waiting.append((sent, info))
                sent += 1
                if sent % _BATCH_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(_BATCH_ACK_POLL_S)
            if client is not self._client:
                return settled()  # reconnected: the old session's acknowledgements never come
            if take_acknowledged():
                progress = loop.time()
            elif loop.time() - progress > self._connect_timeout_s:
                return settled()
        return outcome
