"""MqttLink against the real Mosquitto: retained notices, malformed ones dropped, reports
delivered, presence retained, and notices queued for the car's persistent session."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiomqtt

from firmware_bundles import topics
from firmware_bundles.messages import (
    CampaignNotice,
    ReportState,
    StatusReport,
    encode,
    parse_presence,
    parse_report,
)
from firmware_bundles.vin import make_vin
from vehicle_agent.config import MqttOptions
from vehicle_agent.link import MqttLink, parse_mqtt_url


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


async def next_campaign(notices: AsyncIterator[CampaignNotice], campaign_id: int) -> CampaignNotice:
    async for item in notices:
        if item.campaign_id == campaign_id:
            return item
    raise AssertionError("notice stream ended")


async def test_mqtt_link_round_trip(mosquitto_url: str) -> None:
    vin = make_vin("1HG", "CM826", "R", "A", secrets.randbelow(10**6))
    host, port, _tls = parse_mqtt_url(mosquitto_url)
    link = MqttLink(vin, mosquitto_url, MqttOptions(backoff_min=0.05, backoff_max=0.2))
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
