"""CarMqttLink against the real Mosquitto: retained notices, malformed ones dropped, reports
delivered, presence retained, and notices queued for the car's persistent session."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware_bundles import repo_paths, topics
from firmware_bundles.messages import (
    CampaignNotice,
    ReportState,
    StatusReport,
    encode,
    is_manifest,
    parse_presence,
    parse_report,
)
from firmware_bundles.vin import make_vin
from vehicle_agent.agent import Agent
from vehicle_agent.config import MqttOptions
from vehicle_agent.errors import LinkDown
from vehicle_agent.link import CampaignMessage, CarMqttLink, parse_mqtt_url

from .fakes import REPO, SERIAL, FakeServer


def notice(vin: str, campaign_id: int) -> CampaignNotice:
    return CampaignNotice(
        campaign_id=campaign_id,
        vin=vin,
        nonce=secrets.token_urlsafe(16),
        recall_number="24V-123",
        title="t",
        repo_url="http://127.0.0.1:1/repo",
        issued_at=datetime.now(UTC),
    )


async def next_campaign(notices: AsyncIterator[CampaignMessage], campaign_id: int) -> CampaignNotice:
    """The next notice (not a withdrawal) for this campaign."""
    async for item in notices:
        if isinstance(item, CampaignNotice) and item.campaign_id == campaign_id:
            return item
    raise AssertionError("notice stream ended")


async def test_mqtt_link_round_trip(mosquitto_url: str) -> None:
    vin = make_vin("1HG", "CM826", "R", "A", secrets.randbelow(10**6))
    host, port, _tls = parse_mqtt_url(mosquitto_url)
    link = CarMqttLink(vin, mosquitto_url, MqttOptions(backoff_min=0.05, backoff_max=0.2))
    async with asyncio.timeout(30), aiomqtt.Client(host, port, identifier=f"test-{uuid.uuid4().hex}") as server:
        await server.subscribe(topics.status_topic(vin), qos=1)
        await server.subscribe(topics.presence_topic(vin), qos=1)
        await server.publish(topics.campaign_topic(vin), encode(notice(vin, 1)), qos=1, retain=True)
        try:
            notices = link.notices()
            first = await anext(notices)
            assert first.campaign_id == 1
            assert link.connected

            await server.publish(topics.campaign_topic(vin), b"\xff not a notice", qos=1)
            await server.publish(topics.campaign_topic(vin), encode(notice(vin, 2)), qos=1)
            second = await next_campaign(notices, 2)
            assert link.malformed == 1

            report = StatusReport(
                campaign_id=2, vin=vin, nonce=second.nonce, state=ReportState.NOTIFIED, sent_at=datetime.now(UTC)
            )
            await link.send(report)
            online, received = None, None
            async for message in server.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.matches(topics.presence_topic(vin)):
                    online = parse_presence(message.payload).online
                else:
                    received = parse_report(message.payload)
                if online is not None and received is not None:
                    break
            assert online is True
            assert received == report

            # offline: the broker keeps a QoS 1 notice for the persistent session
            await notices.aclose()
            assert not link.connected
            await server.publish(topics.campaign_topic(vin), encode(notice(vin, 3)), qos=1)
            notices = link.notices()
            assert (await next_campaign(notices, 3)).campaign_id == 3
            await link.announce_offline()
            await notices.aclose()
        finally:
            await server.publish(topics.campaign_topic(vin), b"", qos=1, retain=True)
            await server.publish(topics.presence_topic(vin), b"", qos=1, retain=True)


class _NoAckFor(aiomqtt.Client):
    """A client whose publish of one report state fails once, as aiomqtt's does when the
    PUBACK does not come within its operation timeout, while the connection stays up."""

    state = ReportState.REMEDIED
    failed: list[ReportState] = []

    async def publish(self, topic: str, payload: Any = None, *args: Any, **kwargs: Any) -> None:
        if isinstance(payload, bytes) and topic.endswith("/status") and not is_manifest(payload):
            state = parse_report(payload).state
            if state is self.state and state not in self.failed:
                self.failed.append(state)
                raise aiomqtt.MqttError("Operation timed out")
        await super().publish(topic, payload, *args, **kwargs)


async def test_a_report_whose_publish_timed_out_is_sent_again_on_the_same_session(
    mosquitto_url: str, tmp_path: Path
) -> None:
    """The last report (remedied) gets no PUBACK in time; nothing else would make the car send
    its outbox again (no reconnect, no notice), so the link re-sends it on a timer."""
    server = FakeServer()
    vin = make_vin("1HG", "CM826", "R", "A", secrets.randbelow(10**6))
    server.transport.files[repo_paths.director_metadata_url(REPO, vin) + "1.root.json"] = server.director_root
    server.assign({SERIAL: server.release("2.0", 2)}, vin=vin)
    config = replace(server.agent_config(tmp_path, vin=vin), mqtt_url=mosquitto_url, durable=False)
    link = CarMqttLink(vin, mosquitto_url, MqttOptions(backoff_min=0.05, backoff_max=0.2))
    _NoAckFor.failed = []
    link.client_class = _NoAckFor
    agent = Agent(config, link=link, transport=server.transport)
    host, port, _tls = parse_mqtt_url(mosquitto_url)
    async with asyncio.timeout(15), aiomqtt.Client(host, port, identifier=f"test-{uuid.uuid4().hex}") as observer:
        await observer.subscribe(topics.status_topic(vin), qos=1)
        running = asyncio.create_task(agent.run())
        try:
            while not link.connected:  # noqa: ASYNC110 (subscribed: the notice is not missed)
                await asyncio.sleep(0.02)
            await observer.publish(topics.campaign_topic(vin), encode(server.notice(vin=vin)), qos=1)
            async for message in observer.messages:
                assert isinstance(message.payload, bytes)
                if is_manifest(message.payload):  # the car's version manifests share the topic
                    continue
                if parse_report(message.payload).state is ReportState.REMEDIED:
                    break
            assert _NoAckFor.failed == [ReportState.REMEDIED]  # it did fail once
            assert link.connects == 1  # and came again on the same session
            for _ in range(100):
                if not agent.journal.data.outbox:
                    break
                await asyncio.sleep(0.02)
            assert agent.journal.data.outbox == []
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)


class _NeverAcked:
    """A session's client whose publish waits for a PUBACK that never comes."""

    def __init__(self) -> None:
        self.cancelled = False

    async def publish(self, *_args: Any, **_kwargs: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def test_a_publish_waiting_when_the_session_ends_gives_up_at_once_and_leaves_nothing_behind() -> None:
    """The report stays in the agent's outbox (LinkDown), the next session sends it again."""
    vin = make_vin("1HG", "CM826", "R", "A", secrets.randbelow(10**6))
    link = CarMqttLink(vin, "mqtt://127.0.0.1:9")
    client = _NeverAcked()
    link._client = client  # type: ignore[assignment]  # the session as CarMqttLink.notices keeps it
    link._lost = asyncio.get_running_loop().create_future()
    report = StatusReport(campaign_id=1, vin=vin, nonce="n" * 16, state=ReportState.NOTIFIED, sent_at=datetime.now(UTC))
    sending = asyncio.create_task(link.send(report))
    await asyncio.sleep(0.05)
    assert not sending.done()  # waiting for the PUBACK
    link._client = None  # the session ends, as CarMqttLink.notices ends it
    link._lost.set_result(None)
    with pytest.raises(LinkDown, match="connection lost while publishing"):
        await asyncio.wait_for(sending, 5)
    assert client.cancelled
