"""Report ingest: idempotent, forward-only, every rejection counted, progress always sums up."""

from __future__ import annotations

from typing import Any

from securesystemslib.signer import CryptoSigner

from firmware_bundles import topics
from firmware_bundles.messages import FailureReason, Presence, ReportState, encode
from ota_server.domain.states import VinState
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, remedied, report, vin

S = ReportState


async def _progress(env: Env, campaign_id: int) -> dict[str, Any]:
    body = (await env.client.get(f"/api/v1/campaigns/{campaign_id}/progress")).json()
    assert sum(body["counts"].values()) == body["population"]
    assert set(body["counts"]) == {s.value for s in VinState}
    assert {s.value for s in ReportState} <= set(body["counts"])
    return dict(body)


async def _stats(env: Env) -> dict[str, Any]:
    return dict((await env.client.get("/api/v1/stats/ingest")).json())


async def test_happy_path_to_done(env: Env) -> None:
    vins = [vin(n) for n in range(1, 4)]
    campaign = await launched(env.client, vins)
    cid = campaign["id"]
    nonces = await env.nonces()
    for state in (S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING):
        await env.inject(*(report(cid, v, nonces[v], state) for v in vins))
        progress = await _progress(env, cid)
        assert progress["counts"][state.value] == 3
    await env.inject(remedied(cid, vins[0], nonces[vins[0]]), remedied(cid, vins[1], nonces[vins[1]]))
    await env.inject(report(cid, vins[2], nonces[vins[2]], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED))
    progress = await _progress(env, cid)
    assert progress["counts"]["remedied"] == 2 and progress["counts"]["failed"] == 1
    assert progress["failures_by_reason"] == {"health_check_failed": 1}
    assert progress["done"] is True
    assert (await _stats(env))["accepted"] == 18


async def test_duplicates_and_out_of_order_never_double_count(env: Env) -> None:
    v = vin(1)
    cid = (await launched(env.client, [v]))["id"]
    nonce = (await env.nonces())[v]
    await env.inject(report(cid, v, nonce, S.INSTALLING), report(cid, v, nonce, S.NOTIFIED))
    await env.inject(report(cid, v, nonce, S.INSTALLING), report(cid, v, nonce, S.DOWNLOADING))
    progress = await _progress(env, cid)
    assert progress["counts"]["installing"] == 1
    stats = await _stats(env)
    assert stats["accepted"] == 3 and stats["duplicates"] == 1
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
    [entry] = status["campaigns"]
    assert entry["state"] == "installing"
    assert [h["state"] for h in entry["history"]] == ["installing", "notified", "downloading"]


async def test_terminal_is_final_for_its_attempt_and_a_new_attempt_moves_on(env: Env) -> None:
    v = vin(1)
    cid = (await launched(env.client, [v]))["id"]
    nonce = (await env.nonces())[v]
    await env.inject(report(cid, v, nonce, S.FAILED, reason=FailureReason.DOWNLOAD_FAILED))
    await env.inject(report(cid, v, nonce, S.INSTALLING), remedied(cid, v, nonce))
    progress = await _progress(env, cid)
    assert progress["counts"]["failed"] == 1
    assert progress["failures_by_reason"] == {"download_failed": 1}
    await env.inject(report(cid, v, nonce, S.DOWNLOADING, attempt=2))
    assert (await _progress(env, cid))["counts"]["downloading"] == 1
    await env.inject(report(cid, v, nonce, S.FAILED, reason=FailureReason.BOOT_FAILED))  # late, attempt 1
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()["campaigns"][0]
    assert status["state"] == "downloading" and status["reason"] is None


async def test_rejections_are_counted_by_reason(env: Env) -> None:
    v, other = vin(1), vin(2)
    cid = (await launched(env.client, [v]))["id"]
    nonce = (await env.nonces())[v]
    good_topic, good_payload = report(cid, v, nonce, S.NOTIFIED)
    await env.inject(
        (good_topic, b"{not json"),
        (good_topic, good_payload.replace(b'"notified"', b'"exploded"')),
        (topics.status_topic(other), good_payload),
        report(cid, v, "x" * 32, S.NOTIFIED),
        report(cid, other, nonce, S.NOTIFIED, signer=CryptoSigner.generate_ed25519()),
        report(cid + 1, v, nonce, S.NOTIFIED),
        report(cid, v, nonce, S.REMEDIED),
        report(cid, v, nonce, S.REMEDIED, installed_version="1.0.0", health_ok=True),
        report(cid, v, nonce, S.REMEDIED, installed_version="1.1.0", health_ok=False),
        ("ota/v1/vehicles/" + v + "/campaigns", good_payload),
        ("garbage", good_payload),
    )
    stats = await _stats(env)
    assert stats["accepted"] == 0
    assert stats["rejected"] == {
        "malformed": 3,
        "topic_vin_mismatch": 1,
        "wrong_nonce": 1,
        "vehicle_not_provisioned": 1,
        "unknown_campaign_vehicle": 1,
        "remedied_without_evidence": 3,
        "unknown_topic": 1,
    }
    progress = await _progress(env, cid)
    assert progress["counts"]["pending"] == 1
    await env.inject((good_topic, good_payload))  # the loop is still alive
    assert (await _progress(env, cid))["counts"]["notified"] == 1


async def test_presence_updates_online_and_last_seen(env: Env) -> None:
    v = vin(1)
    await launched(env.client, [v])
    online = encode(Presence(vin=v, online=True, agent_version="1"))
    await env.inject((topics.presence_topic(v), online))
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
    assert status["online"] is True
    assert status["last_seen"].startswith("2026-03-01T12:00:00")
    env.clock.advance(60)
    await env.inject((topics.presence_topic(v), encode(Presence(vin=v, online=False))))
    status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
    assert status["online"] is False
    assert status["last_seen"].startswith("2026-03-01T12:01:00")


async def test_batch_of_many_reports_in_one_go(env: Env) -> None:
    vins = [vin(n) for n in range(1, 301)]
    cid = (await launched(env.client, vins))["id"]
    nonces = await env.nonces()
    messages = [report(cid, v, nonces[v], s) for s in (S.NOTIFIED, S.DOWNLOADING) for v in vins]
    await env.inject(*messages, *messages[:50])
    progress = await _progress(env, cid)
    assert progress["counts"]["downloading"] == 300
    stats = await _stats(env)
    assert stats["accepted"] == 600 and stats["duplicates"] == 50
