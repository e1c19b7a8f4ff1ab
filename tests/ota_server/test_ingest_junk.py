"""Junk on a car's topic never spends that car's allowance; junk has budgets and a counter of its own.

On an open broker anyone can publish on ``.../<VIN>/status``. Only a report whose signature
checks out spends the car's token bucket; everything else spends the junk budgets (per topic
and for all topics), which cut junk before parsing once spent. All on the injected clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner

from firmware_bundles import topics
from firmware_bundles.messages import ReportState, parse_report
from simulator.cluster import parse_metrics
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import launched, report, vin

S = ReportState
STEPS = (S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING)


def _junk(cid: int, v: str, nonce: str) -> list[tuple[str, bytes]]:
    """Four kinds of junk on ``v``'s status topic: forged, tampered, unsigned, unreadable."""
    topic, genuine = report(cid, v, nonce, S.REBOOTING)
    forged = report(cid, v, nonce, S.REBOOTING, signer=CryptoSigner.generate_ed25519())[1]
    tampered = genuine.replace(b'"rebooting"', b'"installing"')
    unsigned = parse_report(genuine).model_copy(update={"signature": None}).model_dump_json().encode()
    return [(topic, forged), (topic, tampered), (topic, unsigned), (topic, b"{not json")]


async def _stats(env: Env) -> dict[str, Any]:
    return dict((await env.client.get("/api/v1/stats/ingest")).json())


async def _state(env: Env, v: str) -> str:
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
    return str(status["campaigns"][0]["state"])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    settings = make_settings(tmp_path, ingest_vin_rate_per_s=1.0, ingest_vin_burst=2)
    async with running(settings) as env:
        yield env


async def test_junk_at_25_a_second_does_not_starve_the_cars_genuine_reports(env: Env) -> None:
    b = vin(2)
    cid = (await launched(env.client, [b]))["id"]
    nonce = (await env.nonces())[b]
    junk = _junk(cid, b, nonce)
    for step in STEPS:  # each simulated second: 24 junk messages, then the car's own report
        await env.inject(*(junk * 6), report(cid, b, nonce, step))
        env.clock.advance(1.0)
    assert await _state(env, b) == "rebooting"
    stats = await _stats(env)
    assert stats["accepted"] == len(STEPS)
    assert "flood" not in stats["rejected"]
    assert stats["junk"] == 24 * len(STEPS)
    assert stats["rejected"]["unknown_key"] == stats["rejected"]["bad_signature"] == 6 * len(STEPS)
    metrics = parse_metrics((await env.client.get("/metrics")).text)
    assert metrics["ota_messages_junk_total"] == 24 * len(STEPS)


async def test_a_cars_own_flood_is_still_cut_and_then_before_parsing(env: Env) -> None:
    b = vin(2)
    cid = (await launched(env.client, [b]))["id"]
    nonce = (await env.nonces())[b]
    await env.inject(*(report(cid, b, nonce, S.NOTIFIED, deferrals=n) for n in range(5)))  # five new steps
    stats = await _stats(env)
    assert (stats["accepted"], stats["duplicates"], stats["rejected"]) == (2, 0, {"flood": 3})
    # the bucket is empty now: the topic's next messages are dropped unread, junk or not
    await env.inject((topics.status_topic(b), b"{not json"), report(cid, b, nonce, S.DOWNLOADING, deferrals=1))
    assert (await _stats(env))["rejected"] == {"flood": 5}
    assert await _state(env, b) == "notified"
    env.clock.advance(1.0)
    await env.inject(report(cid, b, nonce, S.DOWNLOADING, deferrals=1))
    assert await _state(env, b) == "downloading"


async def test_junk_past_its_topics_budget_is_cut_unread_and_other_cars_carry_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ingest_junk_rate_per_s=1.0, ingest_junk_burst=3)
    async with running(settings) as env:
        b, c = vin(2), vin(3)
        cid = (await launched(env.client, [b, c]))["id"]
        nonces = await env.nonces()
        for message in _junk(cid, b, nonces[b]) * 2:  # one at a time: each is judged before the next
            await env.inject(message)
        stats = await _stats(env)
        # past the budget only the tampered copy, which names the car's key, is still read (its own budget)
        assert stats["rejected"]["junk_flood"] == 4 and stats["junk"] == 8
        assert stats["rejected"]["bad_signature"] == 2
        await env.inject(report(cid, c, nonces[c], S.NOTIFIED))  # another topic: untouched
        assert await _state(env, c) == "notified"
        env.clock.advance(1.0)  # the topic's junk budget refills; the car's own was never spent
        await env.inject(report(cid, b, nonces[b], S.NOTIFIED))
        assert await _state(env, b) == "notified"


async def test_junk_on_many_topics_is_bounded_by_the_shared_budget(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, ingest_junk_total_rate_per_s=1.0, ingest_junk_total_burst=4)
    async with running(settings) as env:
        cars = [vin(n) for n in range(1, 7)]
        cid = (await launched(env.client, cars))["id"]
        nonces = await env.nonces()
        for _round in range(2):  # the shared budget (4) runs out in the first round
            for v in cars:
                await env.inject(_junk(cid, v, nonces[v])[0])
        # each topic's first junk is judged (a topic without junk of late is never gated); once
        # the shared budget is empty, every topic that sent junk is cut unread
        assert (await _stats(env))["rejected"] == {"unknown_key": 6, "junk_flood": 6}
        env.clock.advance(1.0)
        await env.inject(report(cid, cars[0], nonces[cars[0]], S.NOTIFIED))
        assert await _state(env, cars[0]) == "notified"


async def test_junk_elsewhere_never_gates_a_topic_that_sent_none(tmp_path: Path) -> None:
    """The shared junk budget bounds what junk costs; it must not become a lever to silence
    every car: a topic that sent no junk is never cut by it, however empty it is."""
    settings = make_settings(tmp_path, ingest_junk_total_rate_per_s=1.0, ingest_junk_total_burst=2)
    async with running(settings) as env:
        junky, clean = vin(1), vin(2)
        cid = (await launched(env.client, [junky, clean]))["id"]
        nonces = await env.nonces()
        for message in _junk(cid, junky, nonces[junky]):
            await env.inject(message)
        assert (await _stats(env))["rejected"]["junk_flood"] == 2  # the shared budget is empty
        await env.inject(report(cid, clean, nonces[clean], S.NOTIFIED))
        assert await _state(env, clean) == "notified"
        assert (await _stats(env))["rejected"]["junk_flood"] == 2


async def test_a_flood_past_the_topics_budget_still_lets_the_cars_signed_reports_through(tmp_path: Path) -> None:
    """Past its topic's junk budget only a message naming the car's registered key is read (junk that
    names it too has a budget of its own): junk at ten times the budget no longer silences the car."""
    settings = make_settings(tmp_path, ingest_junk_rate_per_s=1.0, ingest_junk_burst=3)
    async with running(settings) as env:
        b = vin(2)
        cid = (await launched(env.client, [b]))["id"]
        nonce = (await env.nonces())[b]
        topic = topics.status_topic(b)
        other_key = _junk(cid, b, nonce)[0][1]  # signed by a key that is not the car's
        for step in STEPS:  # each simulated second: 30 junk messages, then the car's own report
            for _ in range(30):
                await env.inject((topic, other_key), (topic, b"{not json"))
            await env.inject(report(cid, b, nonce, step))
            env.clock.advance(1.0)
        assert await _state(env, b) == "rebooting"
        stats = await _stats(env)
        assert stats["accepted"] == len(STEPS) and stats["rejected"]["junk_flood"] > 200


async def test_a_flood_that_never_reaches_a_batch_still_lets_the_cars_first_report_through(tmp_path: Path) -> None:
    """Unsigned and unreadable junk is refused before any batch, so the server has not yet read the
    car's key id when the gate closes: a signed message is read then too (on the keyed budget)."""
    settings = make_settings(tmp_path, ingest_junk_rate_per_s=1.0, ingest_junk_burst=3)
    async with running(settings) as env:
        b = vin(2)
        cid = (await launched(env.client, [b]))["id"]
        nonce = (await env.nonces())[b]
        topic = topics.status_topic(b)
        unsigned = _junk(cid, b, nonce)[2][1]
        for step in STEPS:
            for _ in range(30):
                await env.inject((topic, unsigned), (topic, b"{not json"))
            await env.inject(report(cid, b, nonce, step))
            env.clock.advance(1.0)
        assert await _state(env, b) == "rebooting"
