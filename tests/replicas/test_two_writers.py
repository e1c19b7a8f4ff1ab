"""Two replicas' ingest and scheduler on one PostgreSQL database, at the same time.

Both servers run in this process (each its own runtime, sessions, ingest worker and
scheduler; a shared data dir stands for the shared secrets volume). Every report goes to
both ingestors, some twice, as QoS 1 redelivery to two replicas would: each step is still
stored exactly once, the counts add up exactly, a wave opens once, a gate trips once and
one rollback campaign is launched.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from firmware_bundles.messages import CampaignNotice, FailureReason, ReportState, parse_campaign_message
from ota_server.db.models import Campaign, CampaignEvent, CampaignVehicle
from ota_server.rollout.campaign_tick import TickResult
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import provision, recall_body, remedied, report, upload, vehicle, vin

pytestmark = pytest.mark.services

S = ReportState
STEPS = (S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING)


@asynccontextmanager
async def two_replicas(tmp_path: Path, postgres_url: str, batch: int = 7) -> AsyncIterator[tuple[Env, Env]]:
    settings = make_settings(tmp_path, database_url=postgres_url, ingest_batch_size=batch, ingest_batch_wait_s=0.001)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running(settings))
        b = await stack.enter_async_context(running(settings))
        yield a, b


def nonces(*envs: Env) -> dict[str, str]:
    found: dict[str, str] = {}
    for env in envs:
        for message in env.publisher.messages:
            notice = parse_campaign_message(message.payload)
            if isinstance(notice, CampaignNotice):
                found[notice.vin] = notice.nonce
    return found


async def concurrent_ticks(a: Env, b: Env, rounds: int = 3) -> TickResult:
    """``rounds`` times, one tick in each replica released at the same instant; what they did, summed."""
    total = TickResult()

    def tick(env: Env, barrier: threading.Barrier) -> TickResult:
        barrier.wait(timeout=30)
        return env.runtime.coordinator.tick_sync()

    for _ in range(rounds):
        barrier = threading.Barrier(2)
        results = await asyncio.gather(asyncio.to_thread(tick, a, barrier), asyncio.to_thread(tick, b, barrier))
        for env, result in zip((a, b), results, strict=True):
            env.runtime.dispatcher.dispatch(result.messages)
            total.messages += result.messages
            total.paused += result.paused
            total.opened += result.opened
            total.rollbacks += result.rollbacks
        await settle(a, b)
    return total


async def settle(*envs: Env) -> None:
    for env in envs:
        await env.runtime.coordinator.idle()
        await env.runtime.dispatcher.idle()


async def deliver_to_both(a: Env, b: Env, messages: list[tuple[str, bytes]], seed: int) -> int:
    """Each message to both replicas, every third one a second time to one of them, shuffled."""
    rng = random.Random(seed)
    copies = [(env, m) for m in messages for env in (a, b)]
    copies += [(rng.choice((a, b)), m) for m in messages[::3]]
    rng.shuffle(copies)
    for env, (topic, payload) in copies:
        assert env.runtime.ingestor.submit(topic, payload)
    await asyncio.gather(a.runtime.ingestor.flush(), b.runtime.ingestor.flush())
    return len(copies)


async def fleet(env: Env, vins: list[str]) -> int:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in vins]})
    assert resp.status_code == 201, resp.text
    await provision(env.client, vins)
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    return int(release.json()["id"])


async def launch(env: Env, release_id: int, **extra: Any) -> int:
    recall = await env.client.post("/api/v1/recalls", json={**recall_body(release_id), **extra})
    assert recall.status_code == 201, recall.text
    launched = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert launched.status_code == 201, launched.text
    return int(launched.json()["id"])


def stats(env: Env) -> tuple[int, int]:
    s = env.runtime.ingestor.stats()
    assert not s.rejected, s.rejected
    return s.accepted, s.duplicates


async def test_duplicates_to_two_replicas_are_stored_and_counted_once(tmp_path: Path, postgres_url: str) -> None:
    async with two_replicas(tmp_path, postgres_url) as (a, b):
        vins = [vin(n) for n in range(1, 41)]
        cid = await launch(a, await fleet(a, vins))
        await settle(a, b)
        nonce = nonces(a, b)
        assert set(nonce) == set(vins)
        messages = [report(cid, v, nonce[v], state) for state in STEPS for v in vins]
        messages += [remedied(cid, v, nonce[v]) for v in vins]
        sent = await deliver_to_both(a, b, messages, seed=8)
        await settle(a, b)

        (a_accepted, a_dup), (b_accepted, b_dup) = stats(a), stats(b)
        assert a_accepted + b_accepted == len(messages) == 6 * len(vins)
        assert a_dup + b_dup == sent - len(messages)
        assert a_accepted > 0 and b_accepted > 0  # both really wrote
        with a.runtime.sessions() as session:
            events = session.scalar(
                select(func.count()).where(CampaignEvent.campaign_id == cid, CampaignEvent.source == "car")
            )
            states = dict(
                session.execute(
                    select(CampaignVehicle.state, func.count())
                    .where(CampaignVehicle.campaign_id == cid)
                    .group_by(CampaignVehicle.state)
                ).all()
            )
        assert events == len(messages)
        assert states == {"remedied": len(vins)}


async def test_reports_racing_in_two_replicas_only_move_cars_forward(tmp_path: Path, postgres_url: str) -> None:
    """One replica holds every car's next step, the other the step after, applied at once in big
    batches: whichever commits last, no car ends behind its furthest report (the car rows are
    locked while a batch judges them)."""
    async with two_replicas(tmp_path, postgres_url, batch=500) as (a, b):
        vins = [vin(n) for n in range(1, 201)]
        cid = await launch(a, await fleet(a, vins))
        await settle(a, b)
        nonce = nonces(a, b)
        for round_ in range(3):
            for env in (a, b):
                env.runtime.ingestor.after_batch = None
            for v in vins:
                # the further report goes to the replica whose worker starts (and so commits) first
                assert a.runtime.ingestor.submit(*report(cid, v, nonce[v], STEPS[round_ + 2]))
                assert b.runtime.ingestor.submit(*report(cid, v, nonce[v], STEPS[round_ + 1]))
            await asyncio.gather(a.runtime.ingestor.flush(), b.runtime.ingestor.flush())
            with a.runtime.sessions() as session:
                states = dict(
                    session.execute(
                        select(CampaignVehicle.state, func.count())
                        .where(CampaignVehicle.campaign_id == cid)
                        .group_by(CampaignVehicle.state)
                    ).all()
                )
            assert states == {STEPS[round_ + 2].value: len(vins)}


async def test_a_wave_opens_once_and_a_gate_trips_once_with_one_rollback(tmp_path: Path, postgres_url: str) -> None:
    async with two_replicas(tmp_path, postgres_url) as (a, b):
        vins = [vin(n) for n in range(1, 21)]
        release = await fleet(a, vins)
        rollback = await upload(a.client, version="1.0.1", counter=3)
        assert rollback.status_code == 201, rollback.text
        rollout = {
            "waves": [{"cars": 4}, {"cars": 6}, {"percent": 100}],
            "success_threshold_percent": 100,
            "error_threshold_count": 3,
            "max_retries": 0,
            "rollback_release_id": rollback.json()["id"],
        }
        cid = await launch(b, release, rollout=rollout)
        await settle(a, b)
        for env in (a, b):  # only the ticks below judge the gates, both replicas at the same instant
            env.runtime.ingestor.after_batch = None
        canary = sorted(nonces(a, b))
        assert len(canary) == 4
        nonce = nonces(a, b)
        await deliver_to_both(a, b, [remedied(cid, v, nonce[v]) for v in canary], seed=1)
        passed = await concurrent_ticks(a, b)
        assert passed.opened == [(cid, 1)] and not passed.paused
        wave_one = sorted(set(nonces(a, b)) - set(canary))
        assert len(wave_one) == 6 and len(passed.messages) == 6  # each car of wave 1 notified once

        nonce = nonces(a, b)
        good = [remedied(cid, v, nonce[v]) for v in wave_one[:2]]
        bad = [report(cid, v, nonce[v], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED) for v in wave_one[2:5]]
        await deliver_to_both(a, b, good + bad, seed=2)
        tripped = await concurrent_ticks(a, b)
        assert tripped.paused == [cid] and not tripped.opened
        assert len(tripped.rollbacks) == 1 and tripped.rollbacks[0][0] == cid

        with a.runtime.sessions() as session:
            campaigns = session.scalars(select(Campaign).order_by(Campaign.id)).all()
        assert [(c.kind, c.status, c.current_wave) for c in campaigns] == [
            ("remedy", "paused", 1),
            ("rollback", "active", 0),
        ]
        assert campaigns[1].parent_campaign_id == cid and campaigns[1].population == 2
