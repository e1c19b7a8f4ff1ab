"""A captured signed batch replayed through a real Mosquitto does not silence its car.

Anyone on an open broker can subscribe to a car's status topic, keep its signed report batch and
publish it again as fast as it likes. Before, every copy was charged to the car's token bucket
(its signature is the car's), so 300 copies of a 5-step batch put the bucket 1,400 tokens in debt
and the car's next genuine report was cut as ``flood``. Now the copies are duplicates paid from
the topic's keyed-junk budget: counted, moving nothing, and the car's own next report is stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from firmware_bundles import topics
from simulator.cluster import Mosquitto
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import launched, remedied, vin
from tests.ota_server.mqtt_flow import eventually
from tests.ota_server.test_ingest_batches import STEPS, signed_batch, step
from tests.replicas.conftest import listening

pytestmark = pytest.mark.services

COPIES = 300


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running(make_settings(tmp_path)) as env:  # the default budgets: 5 steps/s, bursts of 100
        yield env


async def test_three_hundred_replays_of_a_batch_leave_the_cars_next_report_stored(
    env: Env, private_broker: Mosquitto
) -> None:
    async with listening(env, private_broker):
        v = vin(1)
        cid = (await launched(env.client, [v]))["id"]
        nonce = (await env.nonces())[v]
        topic, captured = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:5]])

        def stats_now() -> dict[str, int]:
            s = env.runtime.ingestor.stats()
            return {"accepted": s.accepted, "duplicates": s.duplicates, **s.rejected}

        async with aiomqtt.Client("127.0.0.1", private_broker.port, identifier=f"car-{v}") as car:
            await car.publish(topic, captured, qos=topics.QOS)

            async def stored() -> bool:
                return stats_now()["accepted"] >= 5

            await eventually(stored, "the car's batch stored", timeout_s=30)
            async with aiomqtt.Client("127.0.0.1", private_broker.port, identifier="attacker") as attacker:
                for _ in range(COPIES):
                    await attacker.publish(topic, captured, qos=topics.QOS)

            async def replays_counted() -> bool:
                s = stats_now()  # a copy read is 5 duplicate steps, one cut at the edge 1 refusal
                return s["duplicates"] // 5 + s.get("flood", 0) + s.get("junk_flood", 0) >= COPIES

            await eventually(replays_counted, "every replay counted", timeout_s=60)
            await car.publish(*remedied(cid, v, nonce), qos=topics.QOS)  # the car's own next word

            async def remedied_now() -> bool:
                return stats_now()["accepted"] >= 6

            await eventually(remedied_now, "the car's remedied report stored", timeout_s=30)
        stats = stats_now()
        assert "flood" not in stats
        assert stats["accepted"] == 6
        assert stats["duplicates"] == 5 * COPIES
        status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
        assert status["campaigns"][0]["state"] == "remedied"
