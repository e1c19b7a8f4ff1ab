"""One recall end to end over a real broker, shared by the embedded-broker and Mosquitto tests."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import httpx

from firmware_bundles import topics
from firmware_bundles.messages import Presence, ReportState, StatusReport, encode, parse_notice
from firmware_bundles.report_signing import sign_report
from tests.ota_server.helpers import REPORT_KEYS, provision, recall_body, upload, vehicle

DEADLINE_S = 30.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = DEADLINE_S) -> None:
    """Poll ``check`` until true; fail after a bounded deadline (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def car_client(mqtt_url: str, vin: str) -> aiomqtt.Client:
    parts = urlsplit(mqtt_url)
    return aiomqtt.Client(
        parts.hostname or "127.0.0.1",
        parts.port or 1883,
        username=f"car-{vin}",
        identifier=f"test-car-{vin}-{uuid.uuid4().hex[:8]}",
        clean_session=True,
    )


async def one_recall(api_url: str, mqtt_url: str, vin: str, number: str, *, token: str) -> dict[str, Any]:
    """Launch a recall for one car, let the car act over MQTT, return the final progress."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=headers) as api:
        assert (await api.post("/api/v1/vehicles", json=vehicle(vin))).status_code == 201
        await provision(api, [vin])
        release = await upload(api, hardware_id=f"hw-{vin[-6:]}")
        assert release.status_code == 201, release.text
        body = recall_body(release.json()["id"], number, vin_range={"first": vin, "last": vin})
        body["population"]["hardware_id"] = "ecu-main"
        recall = await api.post("/api/v1/recalls", json=body)
        assert recall.status_code == 201, recall.text
        campaign = (await api.post(f"/api/v1/recalls/{recall.json()['id']}/launch")).json()
        cid = campaign["id"]

        async def published() -> bool:
            progress = (await api.get(f"/api/v1/campaigns/{cid}/progress")).json()
            return bool(progress["notices_published"] == 1)

        await eventually(published, "the notice to be published")

        # The car connects only now: the retained notice must still reach it.
        async with car_client(mqtt_url, vin) as car:
            await car.subscribe(topics.campaign_topic(vin), qos=1)
            notice = None
            async with asyncio.timeout(DEADLINE_S):
                async for message in car.messages:
                    notice = parse_notice(bytes(message.payload))
                    break
            assert notice is not None and notice.campaign_id == cid and notice.vin == vin
            await car.publish(topics.presence_topic(vin), encode(Presence(vin=vin, online=True)), qos=1, retain=True)
            steps = [ReportState.NOTIFIED, ReportState.DOWNLOADING, ReportState.REMEDIED]
            for state in steps:
                remedy = state is ReportState.REMEDIED
                report = StatusReport(
                    campaign_id=cid,
                    vin=vin,
                    nonce=notice.nonce,
                    state=state,
                    installed_version="1.1.0" if remedy else None,
                    health_ok=True if remedy else None,
                    sent_at=datetime.now(UTC),
                )
                await car.publish(topics.status_topic(vin), encode(sign_report(report, REPORT_KEYS[vin])), qos=1)
            # tidy the shared broker: clear what this test retained
            await car.publish(topics.presence_topic(vin), b"", qos=1, retain=True)
            await car.publish(topics.campaign_topic(vin), b"", qos=1, retain=True)

        async def remedied() -> bool:
            progress = (await api.get(f"/api/v1/campaigns/{cid}/progress")).json()
            return bool(progress["done"])

        await eventually(remedied, "the car to be remedied")
        status = (await api.get(f"/api/v1/vehicles/{vin}/status")).json()
        assert status["online"] is True
        assert [h["state"] for h in status["campaigns"][0]["history"]] == ["notified", "downloading", "remedied"]
        progress: dict[str, Any] = (await api.get(f"/api/v1/campaigns/{cid}/progress")).json()
        return progress
