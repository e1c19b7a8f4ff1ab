"""Replays cost the replayer, not the car (issue 19's outside round).

Anyone on an open broker can capture a car's signed message and publish it again. Its
signature is the car's, so it used to be charged to the car's token bucket: one captured
32-step batch replayed a few times a second kept the car's bucket in debt, and the car's
genuine reports were then cut as ``flood``. A message that adds nothing to the record (every
step already stored, its manifest's counter not above the car's last) is now paid for out of
the topic's keyed-junk budget, as junk that names the car's key is: it is still counted as a
duplicate, it moves nothing, not even ``last_seen``, and a flood of replays is cut before
parsing once that budget is spent.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from firmware_bundles import topics
from firmware_bundles.messages import encode
from firmware_bundles.report_signing import sign_report
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import REPORT_KEYS
from tests.ota_server.test_ingest_batches import (
    STEPS,
    _car,
    _one_car,
    _stats,
    install_manifest,
    signed_batch,
    step,
)


async def _last_seen(env: Env, v: str) -> datetime:
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
    return datetime.fromisoformat(status["last_seen"])


async def test_a_replayed_batch_does_not_spend_the_cars_tokens_so_its_next_report_is_stored(slow_env: Env) -> None:
    env = slow_env
    cid, v, nonce = await _one_car(env)
    captured = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]])  # genuine: 3 of the car's 4 tokens
    await env.inject(captured)
    for _ in range(5):  # the attacker's copies, faster than the car's refill
        await env.inject(captured)
    await env.inject(signed_batch(v, [step(cid, v, nonce, STEPS[3])]))  # the car's next step: its last token
    stats = await _stats(env)
    assert stats["rejected"] == {}  # before: {"flood": ...}, the genuine step lost
    assert (stats["accepted"], stats["duplicates"]) == (4, 15)
    assert (await _car(env, v))["state"] == "installing"


async def test_a_replayed_lone_report_does_not_spend_the_cars_tokens(slow_env: Env) -> None:
    env = slow_env
    cid, v, nonce = await _one_car(env)
    captured = (topics.status_topic(v), encode(sign_report(step(cid, v, nonce, STEPS[0]), REPORT_KEYS[v])))
    await env.inject(captured)
    await env.inject(*([captured] * 6))
    await env.inject(signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[1:4]]))  # 3 steps: the car's 3 left
    stats = await _stats(env)
    assert stats["rejected"] == {}
    assert (stats["accepted"], stats["duplicates"]) == (4, 6)


async def test_a_replayed_manifest_does_not_spend_the_cars_tokens(slow_env: Env) -> None:
    env = slow_env
    cid, v, nonce = await _one_car(env)
    manifest = (topics.status_topic(v), encode(sign_report(install_manifest(v, 2, "1.0.0"), REPORT_KEYS[v])))
    await env.inject(manifest)  # the car's word: one token
    await env.inject(*([manifest] * 6))
    await env.inject(signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]]))  # the 3 tokens left
    stats = await _stats(env)
    assert stats["rejected"] == {}
    assert (stats["accepted"], stats["manifests"], stats["duplicates"]) == (3, 1, 6)


async def test_a_batch_with_one_new_step_pays_for_that_step_only(slow_env: Env) -> None:
    env = slow_env
    cid, v, nonce = await _one_car(env)
    await env.inject(signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:2]]))  # 2 tokens, 2 left
    await env.inject(signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]]))  # a resend with one new: 1
    await env.inject(signed_batch(v, [step(cid, v, nonce, STEPS[3])]))  # the last token
    await env.inject(signed_batch(v, [step(cid, v, nonce, STEPS[4])]))  # none left: a flood
    stats = await _stats(env)
    assert (stats["accepted"], stats["duplicates"], stats["rejected"]) == (4, 2, {"flood": 1})


async def test_a_replay_does_not_move_the_cars_last_seen(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    captured = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]])
    await env.inject(captured)
    seen = await _last_seen(env, v)
    env.clock.advance(3600)  # the car has gone quiet; an attacker replays its message an hour later
    await env.inject(captured)
    assert await _last_seen(env, v) == seen
    assert (await _stats(env))["duplicates"] == 3
    await env.inject(signed_batch(v, [step(cid, v, nonce, STEPS[3])]))  # the car's own new word moves it
    assert await _last_seen(env, v) == env.clock.now


async def test_a_flood_of_replays_is_cut_once_the_topics_keyed_junk_budget_is_spent(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ingest_junk_rate_per_s=1.0, ingest_junk_burst=3)
    async with running(settings) as env:
        cid, v, nonce = await _one_car(env)
        captured = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]])
        await env.inject(captured)
        for _ in range(8):
            await env.inject(captured)
        stats = await _stats(env)
        assert stats["duplicates"] == 9  # three replays read and counted, paid from the topic's junk budget
        assert stats["rejected"] == {"junk_flood": 5}  # the rest dropped before parsing
        assert stats["accepted"] == 3
