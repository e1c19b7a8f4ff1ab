"""Ingest on hostile status traffic: every message is counted (mostly as rejected), nothing crashes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bundles import topics
from firmware_bundles.messages import ReportState
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, report, vin

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def _counted(env: Env) -> int:
    stats = env.runtime.ingestor.stats()
    return stats.accepted + stats.duplicates + sum(stats.rejected.values())


async def test_arbitrary_bytes_on_the_status_topic_are_rejected(env: Env) -> None:
    car = vin(1)
    submitted = 0

    @FUZZ
    @given(payload=st.binary(max_size=2048), topic=st.sampled_from([topics.status_topic(car), "vehicles/x/status"]))
    def submit(payload: bytes, topic: str) -> None:
        nonlocal submitted
        env.runtime.ingestor.submit(topic, payload)  # must not raise
        submitted += 1

    submit()
    await env.runtime.ingestor.flush()
    stats = env.runtime.ingestor.stats()
    assert stats.accepted == 0 and stats.duplicates == 0
    assert sum(stats.rejected.values()) == submitted


async def test_mutated_genuine_reports_are_all_accounted_for(env: Env) -> None:
    cars = [vin(1)]
    campaign = await launched(env.client, cars)
    nonces = await env.nonces()
    topic, genuine = report(campaign["id"], cars[0], nonces[cars[0]], ReportState.DOWNLOADING)
    submitted = 0

    @FUZZ
    @given(st.data())
    def submit(data: st.DataObject) -> None:
        nonlocal submitted
        payload = bytearray(genuine)
        where = data.draw(st.integers(0, len(payload) - 1))
        if data.draw(st.booleans()):
            payload[where] ^= 1 << data.draw(st.integers(0, 7))
        else:
            payload[where:where] = data.draw(st.binary(min_size=1, max_size=4))
        env.runtime.ingestor.submit(topic, bytes(payload))
        submitted += 1

    submit()
    await env.runtime.ingestor.flush()
    assert _counted(env) == submitted  # accepted, duplicate or rejected: never lost, never a crash
    progress = (await env.client.get(f"/api/v1/campaigns/{campaign['id']}/progress")).json()
    assert sum(progress["counts"].values()) == 1
