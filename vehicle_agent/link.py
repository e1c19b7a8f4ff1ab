"""The server link: campaign notices and withdrawals in, status reports out.

MQTT messages are hints (the signed metadata is the authority), so a message that does
not parse, or names another VIN, is counted and dropped here and never reaches the
agent. :class:`CarMqttLink` is the real link over aiomqtt; :class:`FakeLink` is an
in-memory link for tests and simulated fleets that do not need a broker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

import aiomqtt

from firmware_bundles import topics
from firmware_bundles.errors import MalformedMessage
from firmware_bundles.messages import (
    CampaignNotice,
    CampaignWithdrawal,
    Presence,
    ReportBatch,
    StatusReport,
    VersionManifest,
    encode,
    parse_campaign_message,
)
from vehicle_agent.config import AGENT_VERSION, AgentConfig, MqttOptions
from vehicle_agent.errors import ConfigError, LinkDown

log = logging.getLogger(__name__)

# What the agent sends on its status topic: one step, several steps in one signed batch, a manifest.
Outgoing = StatusReport | ReportBatch | VersionManifest

CampaignMessage = CampaignNotice | CampaignWithdrawal


class Link(Protocol):
    # Called (by the link) after every (re)connect, and again a while after a report could not
    # be published on a session that stayed up; the agent sets it to re-send its outbox.
    on_connect: Callable[[], Awaitable[None]] | None

    def notices(self) -> AsyncGenerator[CampaignMessage, None]:
        """Valid notices and withdrawals for this VIN, forever (reconnecting as needed)."""
        ...

    async def send(self, report: Outgoing) -> None:
        """Deliver one report, report batch or version manifest (QoS 1, acknowledged) or raise :class:`LinkDown`."""
        ...


class NoticeFilter:
    """Parses payloads for one VIN and counts what it drops."""

    def __init__(self, vin: str) -> None:
        self.vin = vin
        self.malformed = 0

    def decode(self, payload: bytes) -> CampaignMessage | None:
        try:
            notice = parse_campaign_message(payload)
        except MalformedMessage as exc:
            self.malformed += 1
            log.warning("%s: dropped malformed notice: %s", self.vin, exc)
            return None
        if notice.vin != self.vin:
            self.malformed += 1
            log.warning("%s: dropped %s addressed to %s", self.vin, notice.kind, notice.vin)
            return None
        return notice


class FakeLink:
    """In-memory link: push notices (or raw payloads) in, read ``reports`` (and ``manifests``) out."""

    def __init__(self, vin: str) -> None:
        self.filter = NoticeFilter(vin)
        self.reports: list[StatusReport] = []  # every step sent, a batch's in order
        self.manifests: list[VersionManifest] = []  # every manifest sent, alone or in a batch
        self.batches: list[ReportBatch] = []  # the batches as sent (their steps and manifests are above too)
        self.online = True
        self.on_connect: Callable[[], Awaitable[None]] | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    @property
    def malformed(self) -> int:
        return self.filter.malformed

    def deliver(self, notice: CampaignMessage | bytes) -> None:
        self._queue.put_nowait(notice if isinstance(notice, bytes) else encode(notice))

    async def reconnect(self) -> None:
        """Come back online as a real link would: the agent's outbox is re-sent."""
        self.online = True
        if self.on_connect is not None:
            await self.on_connect()

    def close(self) -> None:
        """End the notice stream once what was delivered before has been read."""
        self._queue.put_nowait(None)

    async def notices(self) -> AsyncGenerator[CampaignMessage, None]:
        while (payload := await self._queue.get()) is not None:
            notice = self.filter.decode(payload)
            if notice is not None:
                yield notice

    async def send(self, report: Outgoing) -> None:
        if not self.online:
            raise LinkDown("fake link is offline")
        if isinstance(report, VersionManifest):
            self.manifests.append(report)
        elif isinstance(report, ReportBatch):
            self.batches.append(report)
            self.reports.extend(report.reports)
            if report.manifest is not None:
                self.manifests.append(report.manifest)
        else:
            self.reports.append(report)


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:port`` or ``mqtts://host:port`` to (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"not an MQTT URL: {url!r}")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def tls_context(config: AgentConfig) -> ssl.SSLContext | None:
    """The TLS context for an mqtts:// broker: trust the configured CA, present the car's certificate.

    The broker takes the certificate's CN (the VIN) as this car's identity, so the
    ACL confines it to its own topics whatever client id or user name it sends.
    """
    if urlsplit(config.mqtt_url).scheme != "mqtts":
        return None
    try:
        context = ssl.create_default_context(cafile=config.tls_ca)
        if config.tls_cert is not None:
            context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS files unusable: {exc}") from exc
    return context


class CarMqttLink:
    """One persistent MQTT session per car, reconnecting with jittered exponential backoff.

    The client id and user name are the VIN (the embedded broker queues offline
    messages only for named sessions); ``clean_session=False`` keeps the subscription
    and queued QoS 1 notices while the car is offline. Presence is retained, with a
    Last-Will that says offline.
    """

    def __init__(
        self,
        vin: str,
        mqtt_url: str,
        options: MqttOptions | None = None,
        *,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.filter = NoticeFilter(vin)
        self._vin = vin
        self._host, self._port, tls = parse_mqtt_url(mqtt_url)
        self._tls_context = tls_context or (ssl.create_default_context() if tls else None)
        self._password = password
        self._options = options or MqttOptions()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client: aiomqtt.Client | None = None
        self.connects = 0
        self.on_connect: Callable[[], Awaitable[None]] | None = None
        self._on_connect_task: asyncio.Future[None] | None = None
        # Done when the current session ends (a new one per session; None before the first). A
        # future, not an Event: a publish waits on it directly, with no task of its own per send.
        self._lost: asyncio.Future[None] | None = None
        self._resend: asyncio.Task[None] | None = None  # see _resend_later
        self._publish_failures = 0

    @property
    def malformed(self) -> int:
        return self.filter.malformed

    @property
    def connected(self) -> bool:
        return self._client is not None

    def _presence(self, online: bool) -> bytes:
        return encode(Presence(vin=self._vin, online=online, agent_version=AGENT_VERSION))

    # The MQTT client class; the simulator swaps in one with a slower housekeeping loop.
    client_class: type[aiomqtt.Client] = aiomqtt.Client

    def _new_client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(topics.presence_topic(self._vin), self._presence(False), qos=topics.QOS, retain=True)
        return self.client_class(
            self._host,
            self._port,
            identifier=self._vin,
            username=self._vin,
            password=self._password,
            clean_session=False,
            will=will,
            keepalive=self._options.keepalive,
            tls_context=self._tls_context,
        )

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._options.backoff_max, self._options.backoff_min * 2 ** min(failures, 16))
        return self._rng.uniform(self._options.backoff_min / 2, ceiling)  # full jitter spreads a fleet out

    async def notices(self) -> AsyncGenerator[CampaignMessage, None]:
        failures = 0
        while True:
            try:
                async with self._new_client() as client:
                    await client.subscribe(topics.campaign_topic(self._vin), qos=topics.QOS)
                    await client.publish(topics.presence_topic(self._vin), self._presence(True), topics.QOS, True)
                    self._lost = asyncio.get_running_loop().create_future()
                    self._client = client
                    self.connects += 1
                    failures = 0
                    if self.on_connect is not None:
                        self._on_connect_task = asyncio.ensure_future(self.on_connect())
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, str):
                            payload = payload.encode()
                        if not isinstance(payload, bytes | bytearray):
                            self.filter.malformed += 1
                            continue
                        notice = self.filter.decode(bytes(payload))
                        if notice is not None:
                            yield notice
            except aiomqtt.MqttError as exc:
                log.info("%s: MQTT link down (%s); reconnecting", self._vin, exc)
            finally:
                self._client = None
                if self._lost is not None and not self._lost.done():
                    self._lost.set_result(None)
                if self._resend is not None:  # the next session's connect re-sends the outbox
                    self._resend.cancel()
                    self._resend = None
            failures += 1
            await self._sleep(self._backoff(failures))

    async def send(self, report: Outgoing) -> None:
        client = self._client
        if client is None:
            raise LinkDown("MQTT not connected")
        # aiomqtt leaves a QoS 1 publish waiting for its PUBACK when the connection drops (until
        # its operation timeout): give up as soon as this session ends, the outbox keeps the report
        # and the next session sends it again.
        lost = self._lost
        assert lost is not None  # made before the session's client is kept
        publish = asyncio.ensure_future(client.publish(topics.status_topic(self._vin), encode(report), qos=topics.QOS))
        try:
            await asyncio.wait({publish, lost}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the caller is cancelled (e.g. a power cut): leave no publish behind
            publish.cancel()
            raise
        if not publish.done():
            publish.cancel()
            await asyncio.gather(publish, return_exceptions=True)
            raise LinkDown("connection lost while publishing")
        try:
            publish.result()
        except aiomqtt.MqttError as exc:
            self._resend_later(lost)
            raise LinkDown(f"publish failed: {exc}") from exc
        self._publish_failures = 0

    def _resend_later(self, session: asyncio.Future[None]) -> None:
        """A publish failed (e.g. no PUBACK in time) but the session is still up.

        The report stays in the agent's outbox; with the connection up, no reconnect would
        send it again, and a car whose last report this was would never be heard of. So the
        outbox is re-sent (``on_connect``) after a jittered, growing wait, unless the session
        ends first (the next one re-sends it on connect).
        """
        self._publish_failures += 1
        if self.on_connect is None or session.done() or (self._resend is not None and not self._resend.done()):
            return
        self._resend = asyncio.ensure_future(self._resend_after(self._backoff(self._publish_failures), session))

    async def _resend_after(self, delay: float, session: asyncio.Future[None]) -> None:
        await self._sleep(delay)
        if session.done() or session is not self._lost or self.on_connect is None:
            return
        self._resend = None  # a failure while re-sending arms the next try
        await self.on_connect()

    async def announce_offline(self) -> None:
        """Say goodbye before a clean shutdown (the Last-Will covers the unclean one)."""
        client = self._client
        if client is not None:
            try:
                await client.publish(topics.presence_topic(self._vin), self._presence(False), topics.QOS, True)
            except aiomqtt.MqttError:
                log.info("%s: could not publish offline presence", self._vin)
