"""Report batches in ingest: one signed message carrying a car's consecutive steps (issue 19).

The batch's signature is checked once, as a lone report's is, and a batch that fails stores
none of its steps; each step of a good batch then goes through exactly what a lone report
goes through. The car's bucket pays one token per step, so a batch amplifies no flood.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from sqlalchemy import event
from sqlalchemy.engine import Engine

from firmware_bundles import topics
from firmware_bundles.messages import ReportBatch, ReportState, StatusReport, encode
from firmware_bundles.report_signing import sign_report
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import REPORT_KEYS, launched, vin

S = ReportState
STEPS = (S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING, S.REMEDIED)


def step(cid: int, v: str, nonce: str, state: ReportState, **fields: Any) -> StatusReport:
    """One unsigned step of a batch, as the agent makes it (a remedied one with its evidence)."""
    if state is S.REMEDIED:
        fields = {"installed_version": "1.1.0", "health_ok": True} | fields
    return StatusReport(
        campaign_id=cid, vin=v, nonce=nonce, state=state, sent_at=datetime(2026, 3, 1, tzinfo=UTC), **fields
    )


def signed_batch(v: str, steps: list[StatusReport], signer: CryptoSigner | None = None) -> tuple[str, bytes]:
    """``steps`` in one report batch on ``v``'s status topic, signed by ``signer`` or ``v``'s own key."""
    message = ReportBatch(vin=v, reports=tuple(steps), sent_at=datetime(2026, 3, 1, tzinfo=UTC))
    return topics.status_topic(v), encode(sign_report(message, signer or REPORT_KEYS[v]))


async def _stats(env: Env) -> dict[str, Any]:
    return dict((await env.client.get("/api/v1/stats/ingest")).json())


async def _car(env: Env, v: str) -> dict[str, Any]:
    """The car's one campaign entry: its state and its history of steps."""
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
    [entry] = status["campaigns"]
    return dict(entry)


async def _one_car(env: Env) -> tuple[int, str, str]:
    v = vin(1)
    cid = (await launched(env.client, [v]))["id"]
    return cid, v, (await env.nonces())[v]


async def test_a_whole_install_in_one_batch_moves_the_car_to_remedied_with_six_events_in_order(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    await env.inject(signed_batch(v, [step(cid, v, nonce, s) for s in STEPS]))
    car = await _car(env, v)
    assert car["state"] == "remedied"
    assert [h["state"] for h in car["history"]] == [s.value for s in STEPS]
    stats = await _stats(env)
    assert (stats["accepted"], stats["duplicates"], stats["rejected"]) == (6, 0, {})
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
    assert status["last_seen"].startswith("2026-03-01T12:00:00")


async def test_a_step_changed_after_signing_is_a_bad_signature_and_stores_no_step(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    topic, payload = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]])
    tampered = payload.replace(b'"verifying"', b'"installing"')
    assert tampered != payload
    await env.inject((topic, tampered))
    stats = await _stats(env)
    assert (stats["accepted"], stats["rejected"]) == (0, {"bad_signature": 1})  # one message, not three
    car = await _car(env, v)
    assert car["state"] == "pending" and car["history"] == []


async def test_a_batch_signed_by_another_cars_key_is_refused_and_stores_nothing(env: Env) -> None:
    v, other = vin(1), vin(2)
    cid = (await launched(env.client, [v, other]))["id"]
    nonce = (await env.nonces())[v]
    await env.inject(signed_batch(v, [step(cid, v, nonce, s) for s in STEPS], signer=REPORT_KEYS[other]))
    stats = await _stats(env)
    assert (stats["accepted"], stats["rejected"]) == (0, {"key_of_another_vehicle": 1})
    car = await _car(env, v)
    assert car["state"] == "pending" and car["history"] == []


async def test_a_replayed_batch_counts_its_steps_as_duplicates_and_moves_nothing_twice(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    message = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:4]])
    await env.inject(message)
    await env.inject(message, message)
    stats = await _stats(env)
    assert (stats["accepted"], stats["duplicates"], stats["rejected"]) == (4, 8, {})
    car = await _car(env, v)
    assert car["state"] == "installing"
    assert [h["state"] for h in car["history"]] == [s.value for s in STEPS[:4]]


async def test_a_wrong_nonce_inside_a_good_batch_refuses_only_that_step(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    steps = [step(cid, v, nonce, s) for s in STEPS[:4]]
    steps[2] = step(cid, v, "x" * 32, S.VERIFYING)
    await env.inject(signed_batch(v, steps))
    stats = await _stats(env)
    assert (stats["accepted"], stats["rejected"]) == (3, {"wrong_nonce": 1})
    car = await _car(env, v)
    assert car["state"] == "installing"
    assert [h["state"] for h in car["history"]] == ["notified", "downloading", "installing"]


async def test_a_remedied_step_without_evidence_is_refused_and_the_steps_before_it_stored(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    steps = [step(cid, v, nonce, s) for s in STEPS[:5]]
    steps.append(step(cid, v, nonce, S.REMEDIED, installed_version="1.0.0", health_ok=True))
    await env.inject(signed_batch(v, steps))
    stats = await _stats(env)
    assert (stats["accepted"], stats["rejected"]) == (5, {"remedied_without_evidence": 1})
    assert (await _car(env, v))["state"] == "rebooting"


async def test_a_step_for_a_campaign_the_car_is_not_in_is_refused_alone(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    await env.inject(signed_batch(v, [step(cid, v, nonce, S.NOTIFIED), step(cid + 1, v, nonce, S.DOWNLOADING)]))
    stats = await _stats(env)
    assert (stats["accepted"], stats["rejected"]) == (1, {"unknown_campaign_vehicle": 1})
    assert (await _car(env, v))["state"] == "notified"


async def test_an_unsigned_batch_is_refused_at_the_edge(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    unsigned = ReportBatch(vin=v, reports=(step(cid, v, nonce, S.NOTIFIED),), sent_at=datetime(2026, 3, 1, tzinfo=UTC))
    assert env.runtime.ingestor.submit(topics.status_topic(v), encode(unsigned)) is False
    assert (await _stats(env))["rejected"] == {"missing_signature": 1}
    other_topic = topics.status_topic(vin(2))
    assert env.runtime.ingestor.submit(other_topic, signed_batch(v, [step(cid, v, nonce, S.NOTIFIED)])[1]) is False
    assert (await _stats(env))["rejected"] == {"missing_signature": 1, "topic_vin_mismatch": 1}


@pytest.fixture
async def slow_env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running(make_settings(tmp_path, ingest_vin_rate_per_s=1.0, ingest_vin_burst=4)) as env:
        yield env


async def test_a_batch_pays_one_token_per_step_so_the_next_batch_is_a_flood(slow_env: Env) -> None:
    env = slow_env
    cid, v, nonce = await _one_car(env)
    first = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]])  # 4 tokens -> 1 left
    second = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[3:5]])  # 1 token: goes through, in debt
    third = signed_batch(v, [step(cid, v, nonce, STEPS[5])])
    await env.inject(first, second, third)  # all three read (none spent at the edge), paid in the batch
    stats = await _stats(env)
    assert (stats["accepted"], stats["rejected"]) == (5, {"flood": 1})  # the third: one message refused
    assert (await _car(env, v))["state"] == "rebooting"
    env.clock.advance(1.5)  # the debt (-1) is not paid off yet: cut at the edge, before parsing
    assert env.runtime.ingestor.submit(*third) is False
    env.clock.advance(1.0)
    await env.inject(third)
    assert (await _car(env, v))["state"] == "remedied"


@dataclass
class Rows:
    """Rows each kind of statement wrote (an executemany's parameter sets count one each)."""

    written: dict[str, int] = field(default_factory=dict)


@contextmanager
def rows_written(engine: Engine) -> Iterator[Rows]:
    seen = Rows()

    def statement(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
        words = sql.split()
        kind = " ".join(words[:3] if words[0] in ("INSERT", "DELETE") else words[:2]).lower()
        seen.written[kind] = seen.written.get(kind, 0) + (len(params) if many else 1)

    event.listen(engine, "before_cursor_execute", statement)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)


async def test_a_batch_writes_the_cars_row_once_one_event_per_step_and_last_seen_once(either_env: Env) -> None:
    env = either_env
    vins = [vin(n) for n in range(1, 4)]
    cid = (await launched(env.client, vins))["id"]
    nonces = await env.nonces()
    with rows_written(env.runtime.engine) as seen:
        await env.inject(*(signed_batch(v, [step(cid, v, nonces[v], s) for s in STEPS]) for v in vins))
    assert seen.written["update campaign_vehicles"] == 3  # one per car, not one per step
    assert seen.written["insert into campaign_events"] == 18
    assert seen.written["update vehicles"] == 3  # last_seen, once per message
    assert {(await _car(env, v))["state"] for v in vins} == {"remedied"}
