"""Report batches in ingest: one signed message carrying a car's consecutive steps (issue 19).

The batch's signature is checked once, as a lone report's is, and a batch that fails stores
none of its steps; each step of a good batch then goes through exactly what a lone report
goes through. The car's bucket pays one token per step, so a batch amplifies no flood.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import CryptoSigner
from sqlalchemy import event
from sqlalchemy.engine import Engine

from firmware_bundles import topics
from firmware_bundles.messages import (
    EcuManifest,
    FailureReason,
    ManifestReason,
    ReportBatch,
    ReportState,
    StatusReport,
    VersionManifest,
    encode,
)
from firmware_bundles.report_signing import sign_report
from firmware_bundles.uptane import bundle_target_path
from ota_server.db.update_rows import rows_sent
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import HW, REPORT_KEYS, launched, vin

S = ReportState
STEPS = (S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING, S.REMEDIED)


def step(cid: int, v: str, nonce: str, state: ReportState, **fields: Any) -> StatusReport:
    """One unsigned step of a batch, as the agent makes it (a remedied one with its evidence)."""
    if state is S.REMEDIED:
        fields = {"installed_version": "1.1.0", "health_ok": True} | fields
    return StatusReport(
        campaign_id=cid, vin=v, nonce=nonce, state=state, sent_at=datetime(2026, 3, 1, tzinfo=UTC), **fields
    )


def signed_batch(
    v: str, steps: list[StatusReport], signer: CryptoSigner | None = None, manifest: VersionManifest | None = None
) -> tuple[str, bytes]:
    """``steps`` (and ``manifest``) in one report batch on ``v``'s topic, signed by ``signer`` or ``v``'s own key."""
    message = ReportBatch(vin=v, reports=tuple(steps), manifest=manifest, sent_at=datetime(2026, 3, 1, tzinfo=UTC))
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
    """Rows each kind of statement wrote (an executemany's parameter sets count one each, an
    UPDATE from unnested arrays one per array element)."""

    written: dict[str, int] = field(default_factory=dict)


@contextmanager
def rows_written(engine: Engine) -> Iterator[Rows]:
    seen = Rows()

    def statement(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
        words = sql.split()
        kind = " ".join(words[:3] if words[0] in ("INSERT", "DELETE") else words[:2]).lower()
        seen.written[kind] = seen.written.get(kind, 0) + rows_sent(sql, params, many)

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
    if env.runtime.engine.dialect.name == "postgresql":  # one COPY (ota_server/db/copy_rows.py), no INSERT
        assert "insert into campaign_events" not in seen.written
    else:
        assert seen.written["insert into campaign_events"] == 18
    assert sum([len((await _car(env, v))["history"]) for v in vins]) == 18
    assert seen.written["update vehicles"] == 3  # last_seen, once per message
    assert {(await _car(env, v))["state"] for v in vins} == {"remedied"}


def _random_steps(rng: random.Random, cid: int, v: str, nonce: str) -> list[StatusReport]:
    """A car's steps, right and wrong: any state, attempt and deferrals, a wrong nonce or an
    unproven remedy now and then, in any order (a car out of order, or a forger with its key)."""
    steps = []
    for _ in range(rng.randint(1, 10)):
        state = rng.choice(list(S))
        fields: dict[str, Any] = {"attempt": rng.choice((1, 1, 1, 2)), "deferrals": rng.choice((0, 0, 1))}
        if state in (S.FAILED, S.ROLLED_BACK):
            fields["reason"] = FailureReason.HEALTH_CHECK_FAILED
        if state is S.REMEDIED and rng.random() < 0.3:
            fields |= {"installed_version": "1.0.0", "health_ok": True}
        right = rng.random() > 0.1
        steps.append(step(cid, v, nonce if right else "x" * 32, state, **fields))
    if rng.random() < 0.3 and steps:  # a step repeated within the batch
        steps.append(steps[rng.randrange(len(steps))])
    return steps


PLACEHOLDER = "r" * 32  # a plan's right nonce, each car's own in its copy


async def test_a_batch_does_exactly_what_its_steps_sent_alone_do(env: Env) -> None:
    """Forty cars' random steps, each car's once as lone reports and once (its twin) as one batch:
    the same end state, the same history and the same counts."""
    pairs = 40
    lone, batched = [vin(n) for n in range(1, pairs + 1)], [vin(n) for n in range(101, 101 + pairs)]
    cid = (await launched(env.client, lone + batched))["id"]
    nonces = await env.nonces()
    rng = random.Random(19)
    plans = [_random_steps(rng, cid, vin(999), PLACEHOLDER) for _ in range(pairs)]

    def as_car(steps: list[StatusReport], v: str) -> list[StatusReport]:
        return [
            s.model_copy(update={"vin": v, "nonce": nonces[v] if s.nonce == PLACEHOLDER else s.nonce}) for s in steps
        ]

    before = await _stats(env)
    await env.inject(
        *(
            (topics.status_topic(v), encode(sign_report(s, REPORT_KEYS[v])))
            for v, plan in zip(lone, plans, strict=True)
            for s in as_car(plan, v)
        )
    )
    alone = await _stats(env)
    await env.inject(*(signed_batch(v, as_car(plan, v)) for v, plan in zip(batched, plans, strict=True)))
    together = await _stats(env)

    def counts(after: dict[str, Any], since: dict[str, Any]) -> tuple[int, int, dict[str, int]]:
        rejected = {k: n - since["rejected"].get(k, 0) for k, n in after["rejected"].items()}
        return after["accepted"] - since["accepted"], after["duplicates"] - since["duplicates"], rejected

    assert counts(together, alone) == counts(alone, before), (counts(alone, before), counts(together, alone))
    assert sum(counts(alone, before)[2].values()) > 0 and counts(alone, before)[0] > 0  # both kinds happened
    for a, b in zip(lone, batched, strict=True):
        car_a, car_b = await _car(env, a), await _car(env, b)
        keys = ("state", "reason", "attempt", "deferrals")
        assert {k: car_a.get(k) for k in keys} == {k: car_b.get(k) for k in keys}, (a, b)
        strip = ("received_at", "at", "vin")
        assert [{k: h[k] for k in h if k not in strip} for h in car_a["history"]] == [
            {k: h[k] for k in h if k not in strip} for h in car_b["history"]
        ], (a, b)


def install_manifest(v: str, counter: int, version: str = "1.1.0") -> VersionManifest:
    """The agent's install manifest as it rides in a batch: unsigned, the Director's target named."""
    return VersionManifest(
        vin=v,
        counter=counter,
        reason=ManifestReason.INSTALL,
        agent_version="test",
        ecus=(
            EcuManifest(
                ecu_serial=f"S-{v[-6:]}",
                hardware_id=HW,
                version=version,
                target_path=bundle_target_path(HW, version),
            ),
        ),
        sent_at=datetime(2026, 3, 1, tzinfo=UTC),
    )


async def _ecu(env: Env, v: str) -> dict[str, Any]:
    body = await env.get_json(f"/api/v1/vehicles/{v}")
    first: dict[str, Any] = body["ecus"][0]
    return first


async def test_a_batch_carrying_the_install_manifest_records_the_steps_then_the_cars_word(either_env: Env) -> None:
    env = either_env
    cid, v, nonce = await _one_car(env)
    await env.inject(signed_batch(v, [step(cid, v, nonce, s) for s in STEPS], manifest=install_manifest(v, 2)))
    car = await _car(env, v)
    assert car["state"] == "remedied"  # over the air by its own report, not "remedied at dealer" by the manifest
    assert [h["state"] for h in car["history"]] == [s.value for s in STEPS]
    ecu = await _ecu(env, v)
    assert (ecu["installed_version"], ecu["source"]) == ("1.1.0", "reported")
    stats = await _stats(env)
    assert (stats["accepted"], stats["manifests"], stats["rejected"]) == (6, 1, {})
    assert (await env.get_json("/api/v1/discrepancies"))["items"] == []


async def test_a_batch_replayed_with_its_manifest_counts_duplicates_and_moves_nothing_back(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    first = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS], manifest=install_manifest(v, 2))
    await env.inject(first)
    newer = VersionManifest.model_validate(install_manifest(v, 3, version="1.0.0").model_dump())
    await env.inject((topics.status_topic(v), encode(sign_report(newer, REPORT_KEYS[v]))))
    await env.inject(first)  # the old batch again: its steps are duplicates, its manifest is older than counter 3
    stats = await _stats(env)
    assert (stats["accepted"], stats["duplicates"], stats["manifests"]) == (6, 6, 2)
    assert stats["rejected"] == {"manifest_replayed": 1}
    assert (await _ecu(env, v))["installed_version"] == "1.0.0"  # the newest word stands


async def test_a_manifest_changed_inside_a_signed_batch_stores_neither_it_nor_the_steps(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    topic, payload = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS], manifest=install_manifest(v, 2))
    tampered = payload.replace(b'"counter":2', b'"counter":7')
    assert tampered != payload
    await env.inject((topic, tampered))
    stats = await _stats(env)
    assert (stats["accepted"], stats["manifests"], stats["rejected"]) == (0, 0, {"bad_signature": 1})
    assert (await _car(env, v))["history"] == []
    ecu = await _ecu(env, v)
    assert ecu["reported_at"] is None and ecu["installed_version"] == "1.0.0"


async def test_a_batch_with_another_cars_manifest_is_refused_at_the_edge(env: Env) -> None:
    cid, v, nonce = await _one_car(env)
    other = install_manifest(vin(2), 2)
    message = ReportBatch(
        vin=v, reports=(step(cid, v, nonce, S.NOTIFIED),), manifest=other, sent_at=datetime(2026, 3, 1, tzinfo=UTC)
    )
    assert env.runtime.ingestor.submit(topics.status_topic(v), encode(sign_report(message, REPORT_KEYS[v]))) is False
    assert (await _stats(env))["rejected"] == {"malformed": 1}
    assert (await _car(env, v))["history"] == []


async def test_a_batch_pays_a_token_for_the_manifest_it_carries(slow_env: Env) -> None:
    env = slow_env
    cid, v, nonce = await _one_car(env)
    first = signed_batch(v, [step(cid, v, nonce, s) for s in STEPS[:3]], manifest=install_manifest(v, 2))  # 4 -> 0
    second = signed_batch(v, [step(cid, v, nonce, STEPS[3])])
    await env.inject(first, second)
    stats = await _stats(env)
    assert (stats["accepted"], stats["manifests"], stats["rejected"]) == (3, 1, {"flood": 1})


async def test_a_batch_with_its_manifest_updates_each_cars_row_once(either_env: Env) -> None:
    """The manifest's update of the car (counter, digest) takes ``last_seen`` along: one row version."""
    env = either_env
    vins = [vin(n) for n in range(1, 4)]
    cid = (await launched(env.client, vins))["id"]
    nonces = await env.nonces()
    env.clock.advance(60)
    with rows_written(env.runtime.engine) as seen:
        await env.inject(
            *(
                signed_batch(v, [step(cid, v, nonces[v], s) for s in STEPS], manifest=install_manifest(v, 2))
                for v in vins
            )
        )
    assert seen.written["update vehicles"] == 3  # was 6: last_seen, then the manifest's counter
    for v in vins:
        status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
        assert datetime.fromisoformat(status["last_seen"]) == env.clock.now
        assert status["campaigns"][0]["state"] == "remedied"
    assert (await _stats(env))["manifests"] == 3
