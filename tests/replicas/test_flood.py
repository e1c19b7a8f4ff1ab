"""Oversized and malformed payloads and one car's flood, through a real Mosquitto and the server's link.

The car's verified reports spend its token bucket; once it is empty, the topic is cut before
any parsing and counted as ``flood``; the other cars' reports all get through and are counted;
oversized and malformed payloads are junk, counted by reason and as junk, in the ingest stats
and in /metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from firmware_bundles import topics
from firmware_bundles.messages import ReportState
from simulator.cluster import Mosquitto, parse_metrics
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import launched, remedied, report, vin
from tests.ota_server.mqtt_flow import eventually
from tests.replicas.conftest import listening

pytestmark = pytest.mark.services

S = ReportState
STEPS = (S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING)
FLOOD = 3000


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path, ingest_vin_rate_per_s=5, ingest_vin_burst=20, ingest_max_payload_bytes=16384)
    async with running(settings) as env:
        yield env


async def test_a_flood_is_cut_and_counted_while_the_other_cars_get_through(env: Env, private_broker: Mosquitto) -> None:
    async with listening(env, private_broker):
        cars = [vin(n) for n in range(1, 21)]
        noisy = vin(99)
        cid = (await launched(env.client, [*cars, noisy]))["id"]
        nonce = await env.nonces()
        good = [report(cid, v, nonce[v], state) for state in STEPS for v in cars]
        good += [remedied(cid, v, nonce[v]) for v in cars]
        # the noisy car's own reports, each a new step (a copy of one report would be a replay,
        # paid from the topic's junk budget: tests/ota_server/test_ingest_replays.py)
        spam = [report(cid, noisy, nonce[noisy], S.NOTIFIED, deferrals=i)[1] for i in range(FLOOD)]

        async def flood() -> None:
            async with aiomqtt.Client("127.0.0.1", private_broker.port, identifier="noisy-car") as car:
                for i in range(FLOOD):
                    await car.publish(topics.status_topic(noisy), spam[i] if i % 2 else b"{not json", qos=topics.QOS)

        async def honest() -> None:
            async with aiomqtt.Client("127.0.0.1", private_broker.port, identifier="fleet") as fleet:
                await fleet.publish(topics.status_topic(cars[0]), b"x" * 20_000, qos=topics.QOS)  # oversized
                await fleet.publish(topics.status_topic(cars[1]), b"[1, 2", qos=topics.QOS)  # malformed
                for topic, payload in good:
                    await fleet.publish(topic, payload, qos=topics.QOS)
                    await asyncio.sleep(0)

        await asyncio.gather(flood(), honest())

        def stats_now() -> dict[str, int]:
            s = env.runtime.ingestor.stats()
            return {"accepted": s.accepted, "duplicates": s.duplicates, **s.rejected}

        async def all_seen() -> bool:
            s = stats_now()
            return s["accepted"] >= len(good) + 1 and sum(s.values()) >= FLOOD + len(good) + 2

        await eventually(all_seen, "every message counted", timeout_s=60)
        await env.runtime.ingestor.flush()
        stats = stats_now()
        # every honest report stored; the noisy car's verified reports passed while its bucket had
        # tokens, the rest were cut as flood, from the moment its bucket was seen empty unread
        # (malformed ones too); every message has exactly one outcome
        assert sum(stats.values()) == FLOOD + len(good) + 2
        for v in cars:
            status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
            assert len(status["campaigns"][0]["history"]) == len(STEPS) + 1, v
        assert stats["duplicates"] == 0
        assert 1 <= stats["accepted"] - len(good) < FLOOD // 2
        assert stats["flood"] >= 1
        assert stats["oversized"] == 1
        assert stats["malformed"] >= 1
        progress = (await env.client.get(f"/api/v1/campaigns/{cid}/progress")).json()
        assert progress["counts"]["remedied"] == len(cars)
        metrics = parse_metrics((await env.client.get("/metrics")).text)
        assert metrics['ota_messages_rejected_total{reason="flood"}'] == stats["flood"]
        assert metrics['ota_messages_rejected_total{reason="oversized"}'] == 1
        assert metrics["ota_messages_junk_total"] == env.runtime.ingestor.stats().junk >= 2
