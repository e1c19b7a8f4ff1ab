"""The campaign engine in-process: waves, gates, timeouts, retries, rate, windows, cancel, precedence.

Simulated time only: the FakeClock moves when a test says so and ``env.tick()`` runs one
scheduler tick at that time. Reports go in through ingest as the cars would send them.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update
from tuf.api.metadata import Metadata, Targets

from firmware_bundles import topics
from firmware_bundles.messages import (
    CampaignNotice,
    CampaignWithdrawal,
    FailureReason,
    ReportState,
    parse_campaign_message,
)
from firmware_bundles.uptane import assignments_for
from ota_server.db.models import CampaignVehicle, OutboxEvent
from ota_server.services import campaigns
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import HW, provision, recall_body, remedied, report, upload, vehicle, vin

S = ReportState


async def _fleet(env: Env, vins: list[str], **car: Any) -> int:
    """Register and provision ``vins``, upload the fix; return the release id."""
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v, **car) for v in vins]})
    assert resp.status_code == 201, resp.text
    await provision(env.client, vins)
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    body: dict[str, Any] = release.json()
    return int(body["id"])


async def _launch(env: Env, release_id: int, number: str = "24V-123", **extra: Any) -> dict[str, Any]:
    body = {**recall_body(release_id, number), **extra}
    recall = await env.client.post("/api/v1/recalls", json=body)
    assert recall.status_code == 201, recall.text
    rid = recall.json()["id"]
    # an operator the admin created requests; the admin itself may not (it created the approver)
    operator = await env.headers_for(f"operator-{number}", "operator")
    launched = await env.client.post(f"/api/v1/recalls/{rid}/launch", headers=operator)
    if launched.status_code == 202:  # a safety recall: a second person approves
        approver = await env.headers_for(f"approver-{number}", "approver")
        launched = await env.client.post(f"/api/v1/recalls/{rid}/approve", headers=approver)
    assert launched.status_code == 201, launched.text
    await env.runtime.dispatcher.idle()
    campaign: dict[str, Any] = launched.json()
    return campaign


def _notices(env: Env, campaign_id: int | None = None) -> list[CampaignNotice]:
    found = [parse_campaign_message(m.payload) for m in env.publisher.messages]
    return [n for n in found if isinstance(n, CampaignNotice) and campaign_id in (None, n.campaign_id)]


def _notified_vins(env: Env, campaign_id: int) -> set[str]:
    return {n.vin for n in _notices(env, campaign_id)}


async def _progress(env: Env, campaign_id: int) -> dict[str, Any]:
    body: dict[str, Any] = await env.get_json(f"/api/v1/campaigns/{campaign_id}/progress")
    assert sum(body["counts"].values()) == body["population"]
    assert sum(w["size"] for w in body["waves"]) == body["population"]
    return body


async def _run_to(env: Env, cid: int, vins: list[str], final: S, **extra: Any) -> None:
    nonces = await env.nonces()
    for v in vins:
        if final is S.REMEDIED:
            await env.inject(remedied(cid, v, nonces[v]))
        else:
            await env.inject(report(cid, v, nonces[v], final, **extra))


async def test_a_canary_that_passes_opens_the_next_wave(env: Env) -> None:
    vins = [vin(n) for n in range(1, 21)]
    release = await _fleet(env, vins)
    rollout = {"waves": [{"cars": 2}, {"percent": 40}, {"percent": 100}], "success_threshold_percent": 100}
    campaign = await _launch(env, release, rollout=rollout)
    cid = campaign["id"]
    canary = _notified_vins(env, cid)
    assert len(canary) == 2
    progress = await _progress(env, cid)
    assert [w["size"] for w in progress["waves"]] == [2, 8, 10]
    assert progress["counts"]["pending"] == 20 and progress["current_wave"] == 1  # waves count from 1
    # Nothing more while the canary is out, however often the scheduler ticks.
    env.clock.advance(3600)
    await env.tick()
    assert _notified_vins(env, cid) == canary
    # One of two remedied is not 100%: still waiting.
    await _run_to(env, cid, sorted(canary)[:1], S.REMEDIED)
    assert _notified_vins(env, cid) == canary
    await _run_to(env, cid, sorted(canary)[1:], S.REMEDIED)  # the ingest hook judges the gate at once
    await env.runtime.dispatcher.idle()
    second = _notified_vins(env, cid) - canary
    assert len(second) == 8
    progress = await _progress(env, cid)
    assert progress["current_wave"] == 2
    assert progress["waves"][0]["gate"] == "passed" and progress["waves"][1]["opened"]
    assert not progress["waves"][2]["opened"]
    await _run_to(env, cid, sorted(second), S.REMEDIED)
    await env.runtime.dispatcher.idle()
    assert len(_notified_vins(env, cid)) == 20
    await _run_to(env, cid, sorted(set(vins) - canary - second), S.REMEDIED)
    progress = await _progress(env, cid)
    assert progress["done"] and progress["counts"]["remedied"] == 20


async def test_failures_past_the_error_threshold_pause_and_no_further_car_is_notified(env: Env) -> None:
    vins = [vin(n) for n in range(1, 31)]
    release = await _fleet(env, vins)
    rollout = {"waves": [{"cars": 5}, {"percent": 100}], "error_threshold_count": 2, "max_retries": 0}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    canary = sorted(_notified_vins(env, cid))
    assert len(canary) == 5
    await _run_to(env, cid, canary[:1], S.REMEDIED)
    await _run_to(env, cid, canary[1:3], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    await _run_to(env, cid, canary[3:], S.REMEDIED)  # even if the rest succeed
    progress = await _progress(env, cid)
    assert progress["status"] == "paused"
    assert "error threshold" in progress["status_reason"]
    assert progress["waves"][0]["gate"] == "tripped"
    assert progress["failures_by_reason"] == {"health_check_failed": 2}
    for _ in range(3):
        env.clock.advance(3600)
        await env.tick()
    assert len(_notified_vins(env, cid)) == 5  # no car beyond the canary
    campaign = await env.get_json(f"/api/v1/campaigns/{cid}")
    assert campaign["status"] == "paused"
    # 3/5 remedied is below the 90% success threshold and no car of the wave can change: resuming would
    # stall the campaign for ever, so it is refused, saying why (issue 18).
    resumed = await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={"reason": "bad batch of canary cars"})
    assert resumed.status_code == 409 and "success threshold" in resumed.text, resumed.text
    assert len(_notified_vins(env, cid)) == 5


async def test_percentage_error_threshold_and_operator_pause(env: Env) -> None:
    vins = [vin(n) for n in range(1, 11)]
    release = await _fleet(env, vins)
    rollout = {
        "waves": [{"percent": 50}, {"percent": 100}],
        "error_threshold_percent": 40,
        "success_threshold_percent": 80,
        "max_retries": 0,
    }
    cid = (await _launch(env, release, rollout=rollout))["id"]
    first = sorted(_notified_vins(env, cid))
    await _run_to(env, cid, first[:1], S.ROLLED_BACK, reason=FailureReason.BOOT_FAILED)
    assert (await _progress(env, cid))["status"] == "active"  # 1 of 5 = 20%
    paused = await env.client.post(f"/api/v1/campaigns/{cid}/pause", json={"reason": "customer calls"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert "customer calls" in paused.json()["status_reason"]
    await _run_to(env, cid, first[1:], S.REMEDIED)  # the gate would pass, but the campaign is paused
    assert len(_notified_vins(env, cid)) == 5
    resumed = await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={})
    assert resumed.status_code == 200
    await env.runtime.dispatcher.idle()
    assert len(_notified_vins(env, cid)) == 10


async def test_stuck_cars_time_out_and_count_against_the_threshold(env: Env) -> None:
    vins = [vin(n) for n in range(1, 7)]
    release = await _fleet(env, vins)
    rollout = {
        "waves": [{"cars": 3}, {"percent": 100}],
        "device_timeout_s": 600,
        "error_threshold_count": 2,
        "max_retries": 0,
    }
    cid = (await _launch(env, release, rollout=rollout))["id"]
    canary = sorted(_notified_vins(env, cid))
    nonces = await env.nonces()
    await env.inject(*(report(cid, v, nonces[v], S.DOWNLOADING) for v in canary[:2]))
    await env.inject(report(cid, canary[2], nonces[canary[2]], S.DEFERRED, detail="not parked", deferrals=1))
    env.clock.advance(599)
    await env.tick()
    assert (await _progress(env, cid))["counts"]["timed_out"] == 0
    env.clock.advance(2)
    await env.tick()
    progress = await _progress(env, cid)
    assert progress["counts"]["timed_out"] == 2
    assert progress["counts"]["deferred"] == 1  # waiting for its owner is not being stuck
    assert progress["failures_by_reason"] == {"timed_out": 2}
    assert progress["status"] == "paused"
    status = await env.get_json(f"/api/v1/vehicles/{canary[0]}/status")
    history = status["campaigns"][0]["history"]
    assert [h["state"] for h in history][-1] == "timed_out" and history[-1]["source"] == "timeout"
    # A late report proves the car alive: it moves on from timed_out.
    await env.inject(remedied(cid, canary[0], nonces[canary[0]]))
    assert (await _progress(env, cid))["counts"]["remedied"] == 1


async def test_each_deferral_is_its_own_event(env: Env) -> None:
    v = vin(1)
    release = await _fleet(env, [v])
    cid = (await _launch(env, release))["id"]
    nonce = (await env.nonces())[v]
    await env.inject(report(cid, v, nonce, S.NOTIFIED))
    await env.inject(report(cid, v, nonce, S.DEFERRED, deferrals=1, detail="battery 12%"))
    await env.inject(report(cid, v, nonce, S.CONSENTED, deferrals=1))
    await env.inject(report(cid, v, nonce, S.DEFERRED, deferrals=2, detail="not parked"))
    await env.inject(report(cid, v, nonce, S.DEFERRED, deferrals=1, detail="battery 12%"))  # a duplicate
    status = await env.get_json(f"/api/v1/vehicles/{v}/status")
    entry = status["campaigns"][0]
    assert entry["state"] == "deferred" and entry["detail"] == "not parked"
    assert [(h["state"], h["deferrals"]) for h in entry["history"]] == [
        ("notified", 0),
        ("deferred", 1),
        ("consented", 1),
        ("deferred", 2),
    ]
    await env.inject(report(cid, v, nonce, S.DOWNLOADING, deferrals=2))
    assert (await _progress(env, cid))["counts"]["downloading"] == 1


async def test_transient_failures_are_retried_with_backoff_and_a_new_nonce(env: Env) -> None:
    v = vin(1)
    release = await _fleet(env, [v])
    rollout = {"max_retries": 2, "retry_backoff_s": 300}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    first = (await env.nonces())[v]
    await env.inject(report(cid, v, first, S.FAILED, reason=FailureReason.DOWNLOAD_FAILED))
    progress = await _progress(env, cid)
    assert progress["retries_scheduled"] == 1 and not progress["done"]
    env.clock.advance(299)
    await env.tick()
    assert len(_notices(env, cid)) == 1
    env.clock.advance(1)
    await env.tick()
    assert len(_notices(env, cid)) == 2
    second = (await env.nonces())[v]
    assert second != first
    assert (await _progress(env, cid))["counts"]["pending"] == 1
    # The old nonce is refused now; the car's new attempt moves on.
    await env.inject(report(cid, v, first, S.DOWNLOADING, attempt=2))
    assert env.runtime.ingestor.stats().rejected.get("wrong_nonce") == 1
    await env.inject(report(cid, v, second, S.FAILED, attempt=2, reason=FailureReason.METADATA_FETCH_FAILED))
    env.clock.advance(599)  # the second wait is twice as long
    await env.tick()
    assert len(_notices(env, cid)) == 2
    env.clock.advance(1)
    await env.tick()
    third = (await env.nonces())[v]
    await env.inject(report(cid, v, third, S.FAILED, attempt=3, reason=FailureReason.DOWNLOAD_FAILED))
    env.clock.advance(10 * 3600)
    await env.tick()
    progress = await _progress(env, cid)
    assert len(_notices(env, cid)) == 3 and progress["done"]  # two retries, then it stays failed
    # A non-transient failure is never retried automatically; an operator may.
    retry = await env.client.post(f"/api/v1/campaigns/{cid}/retry-failed")
    assert retry.status_code == 200 and retry.json()["vehicles"] == 1
    await env.runtime.dispatcher.idle()
    assert len(_notices(env, cid)) == 4
    fourth = (await env.nonces())[v]
    await env.inject(report(cid, v, fourth, S.REMEDIED, attempt=4, installed_version="1.1.0", health_ok=True))
    assert (await _progress(env, cid))["counts"]["remedied"] == 1


async def test_health_check_failures_are_not_retried(env: Env) -> None:
    v = vin(1)
    release = await _fleet(env, [v])
    cid = (await _launch(env, release, rollout={"max_retries": 3, "retry_backoff_s": 0}))["id"]
    await _run_to(env, cid, [v], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    env.clock.advance(3600)
    await env.tick()
    assert len(_notices(env, cid)) == 1
    assert (await _progress(env, cid))["done"]


async def test_cancel_withdraws_cars_not_started_and_lets_installing_ones_finish(env: Env) -> None:
    vins = [vin(n) for n in range(1, 9)]
    release = await _fleet(env, vins)
    rollout = {"waves": [{"cars": 4}, {"percent": 100}]}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    notified = sorted(_notified_vins(env, cid))
    nonces = await env.nonces()
    installing, waiting = notified[0], notified[1:]
    await env.inject(report(cid, installing, nonces[installing], S.INSTALLING))
    await env.inject(report(cid, waiting[0], nonces[waiting[0]], S.DEFERRED, deferrals=1))
    resp = await env.client.post(f"/api/v1/campaigns/{cid}/cancel", json={"reason": "superseded by 24V-200"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["vehicles"] == 7 and resp.json()["campaign"]["status"] == "cancelled"
    await env.runtime.dispatcher.idle()
    progress = await _progress(env, cid)
    assert progress["counts"]["withdrawn"] == 7 and progress["counts"]["installing"] == 1
    # Only the notified cars get a withdrawal, retained so it replaces the notice.
    withdrawals = [
        (m, parse_campaign_message(m.payload))
        for m in env.publisher.messages
        if isinstance(parse_campaign_message(m.payload), CampaignWithdrawal)
    ]
    assert sorted(w.vin for _, w in withdrawals) == sorted(waiting)
    assert all(m.retain and m.qos == 1 and m.topic == topics.campaign_topic(w.vin) for m, w in withdrawals)
    assert all(w.nonce == nonces[w.vin] for _, w in withdrawals)
    # The Director assigns nothing new to a withdrawn car.
    raw = await env.client.get(f"/repo/director/{waiting[0]}/metadata/targets.json")
    assert Metadata[Targets].from_bytes(raw.content).signed.targets == {}
    # Nothing further is notified, and the installing car finishes and is counted.
    env.clock.advance(3600)
    await env.tick()
    assert len(_notified_vins(env, cid)) == 4
    await env.inject(remedied(cid, installing, nonces[installing]))
    await env.inject(report(cid, waiting[1], nonces[waiting[1]], S.WITHDRAWN))  # the car confirms
    progress = await _progress(env, cid)
    assert progress["counts"]["remedied"] == 1 and progress["counts"]["withdrawn"] == 7 and progress["done"]
    log = await env.client.get(f"/api/v1/campaigns/{cid}/notices", params={"vin": waiting[0]})
    assert [e["kind"] for e in log.json()["items"]] == ["campaign", "withdrawal"]
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/cancel", json={})).status_code == 409


async def test_rate_limit_holds_within_each_minute(env: Env) -> None:
    vins = [vin(n) for n in range(1, 8)]
    release = await _fleet(env, vins)
    cid = (await _launch(env, release, rollout={"rate": {"per_minute": 3}}))["id"]
    assert len(_notices(env, cid)) == 3
    await env.tick()
    env.clock.advance(59)
    await env.tick()
    assert len(_notices(env, cid)) == 3
    env.clock.advance(1)
    await env.tick()
    assert len(_notices(env, cid)) == 6
    env.clock.advance(60)
    await env.tick()
    assert len(_notices(env, cid)) == 7


async def test_rate_limit_with_exponential_ramp(env: Env) -> None:
    vins = [vin(n) for n in range(1, 31)]
    release = await _fleet(env, vins)
    rollout = {"rate": {"per_minute": 8, "ramp": {"start_per_minute": 2, "factor": 2, "every_notified": 2}}}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    seen = [len(_notices(env, cid))]
    for _ in range(5):
        env.clock.advance(60)
        await env.tick()
        seen.append(len(_notices(env, cid)))
    # 2 a minute, then 4 once 2 went out, then the ceiling of 8
    assert seen == [2, 6, 14, 22, 30, 30]


async def test_windows_are_respected_in_each_cars_local_time(env: Env) -> None:
    berlin, la = vin(1), vin(2)
    resp = await env.client.post(
        "/api/v1/vehicles/batch",
        json={
            "vehicles": [
                {**vehicle(berlin), "time_zone": "Europe/Berlin"},
                {**vehicle(la), "time_zone": "America/Los_Angeles"},
            ]
        },
    )
    assert resp.status_code == 201, resp.text
    await provision(env.client, [berlin, la])
    release = (await upload(env.client)).json()["id"]
    # The clock starts at 2026-03-01 12:00 UTC: 13:00 in Berlin, 04:00 in Los Angeles.
    rollout = {"windows": [{"start": "01:00", "end": "05:00"}], "start_at": "2026-03-01T11:00:00Z"}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    assert _notified_vins(env, cid) == {la}
    env.clock.advance(11 * 3600)  # 23:00 UTC: midnight in Berlin
    await env.tick()
    assert _notified_vins(env, cid) == {la}
    env.clock.advance(1 * 3600)  # 00:00 UTC: 01:00 in Berlin
    await env.tick()
    assert _notified_vins(env, cid) == {la, berlin}
    bad = await env.client.post("/api/v1/vehicles", json={**vehicle(vin(3)), "time_zone": "Mars/Olympus"})
    assert bad.status_code == 422


async def test_nothing_is_notified_before_the_start_time(env: Env) -> None:
    v = vin(1)
    release = await _fleet(env, [v])
    cid = (await _launch(env, release, rollout={"start_at": "2026-03-02T00:00:00Z"}))["id"]
    assert _notices(env, cid) == []
    assert [w["opened"] for w in (await _progress(env, cid))["waves"]] == [False]  # not open before the start
    env.clock.advance(12 * 3600 - 1)
    await env.tick()
    assert _notices(env, cid) == []
    env.clock.advance(1)
    await env.tick()
    assert len(_notices(env, cid)) == 1


async def test_a_safety_recall_takes_precedence_over_a_feature_update(env: Env) -> None:
    busy, idle = vin(1), vin(2)
    release = await _fleet(env, [busy, idle])
    # A feature update reaches one car now and the other only in a later wave.
    feature = await _launch(
        env, release, "24V-300", rollout={"waves": [{"cars": 1}, {"percent": 100}], "success_threshold_percent": 100}
    )
    [first] = _notified_vins(env, feature["id"])
    second = idle if first == busy else busy
    nonces = await env.nonces()
    await env.inject(report(feature["id"], first, nonces[first], S.INSTALLING))
    safety = await _launch(env, release, "24V-301", safety_recall=True)
    # The installing car finishes its feature update first; the other car gets the recall at once.
    assert _notified_vins(env, safety["id"]) == {second}
    safety_notice = _notices(env, safety["id"])[0]
    assert safety_notice.safety_recall and not safety_notice.requires_consent
    # The feature gate passes, but its pending car waits for the unfinished safety recall.
    await env.inject(remedied(feature["id"], first, nonces[first]))
    await env.runtime.dispatcher.idle()
    assert _notified_vins(env, feature["id"]) == {first}
    assert _notified_vins(env, safety["id"]) == {second, first}
    safety_nonces = {n.vin: n.nonce for n in _notices(env, safety["id"])}
    for car in (first, second):
        await env.inject(remedied(safety["id"], car, safety_nonces[car]))
    await env.runtime.dispatcher.idle()
    assert _notified_vins(env, feature["id"]) == {first, second}


async def test_operator_records_with_evidence_and_counts_add_up(env: Env) -> None:
    vins = [vin(n) for n in range(1, 6)]
    release = await _fleet(env, vins)
    cid = (await _launch(env, release))["id"]
    url = f"/api/v1/campaigns/{cid}/vehicles/{{}}/outcome"
    dealer = await env.client.post(
        url.format(vins[0]),
        json={"outcome": "remedied_at_dealer", "evidence": "Repair order 4711, software 1.1.0", "reference": "RO-4711"},
    )
    assert dealer.status_code == 200, dealer.text
    assert dealer.json()["evidence_ref"] == "RO-4711" and dealer.json()["recorded_by"] == "admin"
    stolen = await env.client.post(
        url.format(vins[1]), json={"outcome": "unreachable", "reason": "stolen", "evidence": "Police report 99"}
    )
    assert stolen.status_code == 200
    inspected = await env.client.post(
        url.format(vins[2]), json={"outcome": "inspected_not_needed", "evidence": "Has the revised controller"}
    )
    assert inspected.status_code == 200
    no_reason = await env.client.post(url.format(vins[3]), json={"outcome": "unreachable", "evidence": "gone"})
    assert no_reason.status_code == 422
    nonces = await env.nonces()
    await env.inject(remedied(cid, vins[3], nonces[vins[3]]))
    over_ota = await env.client.post(url.format(vins[3]), json={"outcome": "remedied_at_dealer", "evidence": "x"})
    assert over_ota.status_code == 409  # a verified OTA remedy is never overwritten
    unknown = await env.client.post(url.format(vin(99)), json={"outcome": "remedied_at_dealer", "evidence": "x"})
    assert unknown.status_code == 404
    # A report after a dealer remedy is kept in the history but changes nothing.
    await env.inject(report(cid, vins[0], nonces[vins[0]], S.DOWNLOADING))
    progress = await _progress(env, cid)
    assert progress["counts"]["remedied_at_dealer"] == 1
    assert progress["counts"]["unreachable"] == 1 and progress["unreachable_by_reason"] == {"stolen": 1}
    assert progress["counts"]["inspected_not_needed"] == 1 and progress["counts"]["remedied"] == 1
    viewer = await env.headers_for("viewer-1", "viewer")
    refused = await env.client.post(
        url.format(vins[4]), json={"outcome": "remedied_at_dealer", "evidence": "x"}, headers=viewer
    )
    assert refused.status_code == 403


async def test_a_dynamic_campaign_takes_cars_registered_later(env: Env) -> None:
    vins = [vin(1), vin(2)]
    release = await _fleet(env, vins)
    static = await _launch(env, release, "24V-500", population={"models": ["Sedan"]})
    dynamic = await _launch(env, release, "24V-501", population={"models": ["Sedan"]}, dynamic=True, safety_recall=True)
    late = vin(3)
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(late))).status_code == 201
    await provision(env.client, [late])
    await env.tick()
    assert (await _progress(env, static["id"]))["population"] == 2
    progress = await _progress(env, dynamic["id"])
    assert progress["population"] == 3
    campaign = await env.get_json(f"/api/v1/campaigns/{dynamic['id']}")
    assert campaign["launch_population"] == 2
    assert late in _notified_vins(env, dynamic["id"])


async def test_notice_carries_preconditions_owner_notice_and_consent(env: Env) -> None:
    v = vin(1)
    release = await _fleet(env, [v])
    owner_notice = {
        "purpose": "Improves the brake assist",
        "safety_recall": False,
        "what_changes": "Brake assist engages earlier",
        "expected_minutes": 20,
        "unavailable_functions": ["driving"],
        "contact": {
            "name": "Dana Smith",
            "role": "Customer care",
            "phone": "+1 555 0100",
            "email": "care@example.com",
        },
    }
    cid = (
        await _launch(
            env,
            release,
            owner_notice=owner_notice,
            preconditions={"min_battery_percent": 50},
            remedy_type="both",
            manufacturer_number="MFR-77",
            requires_consent=None,  # the default: a non-safety update asks the owner
        )
    )["id"]
    [notice] = _notices(env, cid)
    assert notice.requires_consent and not notice.safety_recall
    assert notice.preconditions is not None and notice.preconditions.min_battery_percent == 50
    assert notice.preconditions.parked  # defaults from the contract
    assert notice.owner_notice is not None and notice.owner_notice.contact.name.startswith("Dana")
    recall = (await env.client.get("/api/v1/recalls")).json()["items"][0]
    assert recall["remedy_type"] == "both" and recall["requires_consent"]
    assert recall["rollout"]["waves"] == [{"cars": None, "percent": 100.0}]
    mismatch = await env.client.post(
        "/api/v1/recalls",
        json={**recall_body(release, "24V-124"), "safety_recall": True, "owner_notice": owner_notice},
    )
    assert mismatch.status_code == 422
    consent_for_safety = await env.client.post(
        "/api/v1/recalls", json={**recall_body(release, "24V-126"), "safety_recall": True, "requires_consent": True}
    )
    assert consent_for_safety.status_code == 422
    huge = {**owner_notice, "purpose": "x" * 2000, "what_changes": "y" * 2000, "what_to_do": "z" * 2000}
    huge.update(on_success="s" * 2000, on_failure="f" * 2000, unavailable_functions=["u" * 1000] * 10)
    too_big = await env.client.post("/api/v1/recalls", json={**recall_body(release, "24V-125"), "owner_notice": huge})
    assert too_big.status_code == 422 and "bytes" in too_big.json()["detail"]


async def test_a_car_that_never_answers_times_out_and_is_notified_again(env: Env) -> None:
    v = vin(1)
    release = await _fleet(env, [v])
    rollout = {"ack_timeout_s": 3600, "max_retries": 1, "retry_backoff_s": 60}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    env.clock.advance(3600)
    await env.tick()
    progress = await _progress(env, cid)
    assert progress["counts"]["timed_out"] == 1 and progress["retries_scheduled"] == 1
    env.clock.advance(60)
    await env.tick()
    assert len(_notices(env, cid)) == 2 and (await _progress(env, cid))["counts"]["pending"] == 1


async def test_a_dealer_only_recall_notifies_no_car(env: Env) -> None:
    v = vin(1)
    release = await _fleet(env, [v])
    cid = (await _launch(env, release, remedy_type="dealer"))["id"]
    await env.tick()
    assert _notices(env, cid) == []
    await env.client.post(
        f"/api/v1/campaigns/{cid}/vehicles/{v}/outcome",
        json={"outcome": "remedied_at_dealer", "evidence": "RO 1"},
    )
    progress = await _progress(env, cid)
    assert progress["counts"]["remedied_at_dealer"] == 1 and progress["done"]


async def _with_rollback_release(env: Env, vins: list[str]) -> tuple[int, int]:
    """The fleet and its fix (1.1.0, counter 2), plus a rollback release: 1.0.0 re-released as 1.0.1, counter 3."""
    release = await _fleet(env, vins)
    rollback = await upload(env.client, version="1.0.1", counter=3)
    assert rollback.status_code == 201, rollback.text
    return release, int(rollback.json()["id"])


async def test_a_tripped_wave_rolls_its_remedied_cars_back(env: Env) -> None:
    vins = [vin(n) for n in range(1, 11)]
    release, rollback_release = await _with_rollback_release(env, vins)
    rollout = {
        "waves": [{"cars": 5}, {"percent": 100}],
        "error_threshold_count": 3,
        "max_retries": 0,
        "rollback_release_id": rollback_release,
    }
    cid = (await _launch(env, release, rollout=rollout))["id"]
    canary = sorted(_notified_vins(env, cid))
    assert len(canary) == 5
    await _run_to(env, cid, canary[:2], S.REMEDIED)
    parent_nonces = await env.nonces()
    await _run_to(env, cid, canary[2:4], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    assert len(await _campaigns(env)) == 1  # 2 errors: not yet
    await _run_to(env, cid, canary[4:], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    await env.runtime.dispatcher.idle()
    # The parent is paused and its progress names the rollback campaign.
    progress = await _progress(env, cid)
    assert progress["status"] == "paused" and progress["waves"][0]["gate"] == "tripped"
    rid = progress["rollback_campaign_id"]
    assert rid is not None and f"rollback campaign {rid} launched" in progress["status_reason"]
    listed = await _campaigns(env)
    assert [c["id"] for c in listed] == [cid, rid]
    child = listed[1]
    assert child["kind"] == "rollback" and child["parent_campaign_id"] == cid
    assert child["release_id"] == rollback_release and child["recall_id"] == listed[0]["recall_id"]
    assert child["population"] == 2 and child["status"] == "active"
    # Exactly the two remedied cars of the wave, notified at once (one wave, no approval), with new nonces.
    assert _notified_vins(env, rid) == set(canary[:2])
    nonces = await env.nonces()
    assert all(nonces[v] != parent_nonces[v] for v in canary[:2])
    # Their Director metadata now assigns the rollback release.
    for v in canary[:2]:
        raw = await env.client.get(f"/repo/director/{v}/metadata/targets.json")
        [assignment] = assignments_for(Metadata[Targets].from_bytes(raw.content).signed, v, {f"S-{v[-6:]}": HW})
        assert assignment.version == "1.0.1"
    # Nothing further of the parent goes out; the rollback finishes as the cars report.
    env.clock.advance(3600)
    await env.tick()
    assert len(_notified_vins(env, cid)) == 5
    for v in canary[:2]:
        await env.inject(remedied(rid, v, nonces[v], version="1.0.1"))
    rolled = await _progress(env, rid)
    assert rolled["kind"] == "rollback" and rolled["rollback_campaign_id"] is None
    assert rolled["counts"]["remedied"] == 2 and rolled["done"] and rolled["waves"][0]["gate"] == "passed"
    # Still one rollback per parent, and the recall's remedy campaign cannot be launched twice. Resuming the
    # parent would stall it (2 of 5 remedied, no car of the wave left to change): refused, saying so.
    resumed = await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={})
    assert resumed.status_code == 409 and "missed its success threshold" in resumed.text, resumed.text
    recall_id = listed[0]["recall_id"]
    assert (await env.get_json(f"/api/v1/recalls/{recall_id}"))["campaign_id"] == cid
    again = await env.client.post(f"/api/v1/recalls/{recall_id}/launch")
    assert again.status_code == 409, again.text


async def _campaigns(env: Env) -> list[dict[str, Any]]:
    resp = await env.client.get("/api/v1/campaigns")
    assert resp.status_code == 200, resp.text
    body: list[dict[str, Any]] = resp.json()["items"]
    return body


async def test_no_rollback_campaign_when_no_car_of_the_wave_is_remedied(env: Env) -> None:
    vins = [vin(n) for n in range(1, 11)]
    release, rollback_release = await _with_rollback_release(env, vins)
    rollout = {
        "waves": [{"cars": 5}, {"percent": 100}],
        "error_threshold_count": 3,
        "max_retries": 0,
        "rollback_release_id": rollback_release,
    }
    cid = (await _launch(env, release, rollout=rollout))["id"]
    canary = sorted(_notified_vins(env, cid))
    await _run_to(env, cid, canary[:3], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    progress = await _progress(env, cid)
    assert progress["status"] == "paused" and progress["rollback_campaign_id"] is None
    assert "no car of wave 1 is remedied" in progress["status_reason"]
    assert [c["id"] for c in await _campaigns(env)] == [cid]


async def test_the_rollback_release_is_checked_when_the_recall_is_filed(env: Env) -> None:
    release = await _fleet(env, [vin(1)])
    lower = await upload(env.client, version="1.0.9", counter=1)
    same = await upload(env.client, version="1.0.8", counter=2)
    other_hw = await upload(env.client, hardware_id="ecu-body", version="1.0.1", counter=3)
    for resp in (lower, same, other_hw):
        assert resp.status_code == 201, resp.text
    cases = [
        (lower.json()["id"], "cars refuse a lower counter"),
        (same.json()["id"], "not above the recall release's 2"),
        (other_hw.json()["id"], "'ecu-body'"),
        (999_999, "does not exist"),
    ]
    for n, (rollback_id, message) in enumerate(cases):
        body = {**recall_body(release, f"24V-20{n}"), "rollout": {"rollback_release_id": rollback_id}}
        resp = await env.client.post("/api/v1/recalls", json=body)
        assert resp.status_code == 422, resp.text
        assert "rollback_release_id" in resp.json()["detail"] and message in resp.json()["detail"]


async def test_a_completed_campaign_shows_no_gate_still_waiting(env: Env) -> None:
    """Outside test (issue 18): a wave short of its success threshold with no car left to change said "waiting"."""
    vins = [vin(n) for n in range(1, 4)]
    release = await _fleet(env, vins)
    rollout = {"success_threshold_percent": 100, "error_threshold_count": 5, "max_retries": 0}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    await _run_to(env, cid, vins[:2], S.REMEDIED)
    await _run_to(env, cid, vins[2:], S.FAILED, reason=FailureReason.HASH_MISMATCH)
    await env.runtime.dispatcher.idle()
    await env.tick()
    progress = await _progress(env, cid)
    assert progress["status"] == "completed" and progress["done"], progress
    [wave] = progress["waves"]
    assert (wave["remedied"], wave["needed"], wave["gate"]) == (2, 3, "missed"), wave
    dashboard = await env.get_json(f"/api/v1/campaigns/{cid}/dashboard")
    assert [w["gate"] for w in dashboard["waves"]] == ["missed"]


def _missed_step(cid: int, needed: int) -> str:
    return (
        f"Waiting: wave 1 missed its success threshold (0 of {needed} needed remedied); an operator can retry "
        f"its failed cars (ota campaigns retry {cid} / the Retry button) or cancel the campaign."
    )


async def _next_step(env: Env, v: str, cid: int) -> str:
    timeline = await env.get_json(f"/api/v1/vehicles/{v}/timeline")
    [step] = [c["next_step"] for c in timeline["campaigns"] if c["campaign_id"] == cid]
    return str(step)


async def _retry_canary(env: Env, cid: int, canary: list[str], attempt: int, final: S) -> None:
    """The canary's cars get new notices (an operator's retry) and report ``final`` on them."""
    nonces = await env.nonces()
    for v in canary:
        if final is S.REMEDIED:
            await env.inject(
                report(cid, v, nonces[v], final, attempt=attempt, installed_version="1.1.0", health_ok=True)
            )
        else:
            await env.inject(
                report(cid, v, nonces[v], final, attempt=attempt, reason=FailureReason.HEALTH_CHECK_FAILED)
            )


@pytest.mark.parametrize("threshold", [90, 50])
async def test_a_wave_that_can_no_longer_pass_is_missed_and_resume_says_so(env: Env, threshold: int) -> None:
    """Outside test (issue 18): after a trip, resuming a wave whose cars were all final stalled the campaign
    for ever, its gate 'waiting' and the later cars 'waiting for wave 2 to open (wave 1 is rolling out)'."""
    vins = [vin(n) for n in range(1, 7)]
    release = await _fleet(env, vins)
    rollout = {
        "waves": [{"cars": 2}, {"percent": 100}],
        "error_threshold_count": 1,
        "success_threshold_percent": threshold,
        "max_retries": 0,
    }
    cid = (await _launch(env, release, rollout=rollout))["id"]
    canary = sorted(_notified_vins(env, cid))
    later = sorted(set(vins) - set(canary))
    await _run_to(env, cid, canary, S.ROLLED_BACK, reason=FailureReason.HEALTH_CHECK_FAILED)
    progress = await _progress(env, cid)
    assert progress["status"] == "paused" and progress["waves"][0]["gate"] == "tripped", progress
    needed = progress["waves"][0]["needed"]
    # Resuming would change nothing: refused, saying what would.
    resumed = await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={})
    assert resumed.status_code == 409, resumed.text
    assert "wave 1" in resumed.text and f"ota campaigns retry {cid}" in resumed.text
    assert await _next_step(env, later[0], cid) == _missed_step(cid, needed)
    # The operator retries the canary's cars and resumes: they are notified again and the wave can pass.
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/retry-failed")).status_code == 200
    resumed = await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={})
    assert resumed.status_code == 200, resumed.text
    await env.runtime.dispatcher.idle()
    assert len(_notices(env, cid)) == 4
    assert (await _progress(env, cid))["waves"][0]["gate"] == "waiting"
    await _retry_canary(env, cid, canary, 2, S.REMEDIED)
    await env.runtime.dispatcher.idle()
    assert _notified_vins(env, cid) == set(vins)
    progress = await _progress(env, cid)
    assert progress["current_wave"] == 2 and progress["waves"][0]["gate"] == "passed", progress


async def test_a_missed_wave_pauses_the_campaign_once_and_a_retry_reopens_it(env: Env) -> None:
    """A wave short of its threshold with no car of it left to change pauses the campaign with a reason
    (a campaign.paused webhook), its gate 'missed'; resume does not loop back into the pause, a retry does it."""
    vins = [vin(n) for n in range(1, 7)]
    release = await _fleet(env, vins)
    rollout = {"waves": [{"cars": 2}, {"percent": 100}], "max_retries": 0}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    canary = sorted(_notified_vins(env, cid))
    later = sorted(set(vins) - set(canary))
    await _run_to(env, cid, canary[:1], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    assert (await _progress(env, cid))["waves"][0]["gate"] == "waiting"  # the other car may still pass it
    await _run_to(env, cid, canary[1:], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    progress = await _progress(env, cid)
    assert progress["status"] == "paused", progress
    assert progress["status_reason"].startswith("success threshold missed in wave 1"), progress
    assert [w["gate"] for w in progress["waves"]] == ["missed", "waiting"]
    assert [w["opened"] for w in progress["waves"]] == [True, False]
    dashboard = await env.get_json(f"/api/v1/campaigns/{cid}/dashboard")
    assert [w["gate"] for w in dashboard["waves"]] == ["missed", "waiting"]
    with env.runtime.sessions() as session:
        events = [e.payload["type"] for e in session.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]
    assert events.count("campaign.paused") == 1, events
    assert await _next_step(env, later[0], cid) == _missed_step(cid, 2)
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={})).status_code == 409
    for _ in range(2):
        env.clock.advance(3600)
        await env.tick()
    assert (await _progress(env, cid))["status"] == "paused"
    # Retrying the failed cars is what the pause asked for: the campaign is active again, and a retry that
    # fails too pauses it again (the operator is told once more).
    retried = await env.client.post(f"/api/v1/campaigns/{cid}/retry-failed")
    assert retried.status_code == 200 and retried.json()["campaign"]["status"] == "active", retried.text
    await env.runtime.dispatcher.idle()
    assert len(_notices(env, cid)) == 4
    await _retry_canary(env, cid, canary, 2, S.FAILED)
    assert (await _progress(env, cid))["status"] == "paused"
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/retry-failed")).status_code == 200
    await env.runtime.dispatcher.idle()
    await _retry_canary(env, cid, canary, 3, S.REMEDIED)
    await env.runtime.dispatcher.idle()
    assert _notified_vins(env, cid) == set(vins)
    assert (await _progress(env, cid))["status"] == "active"


async def test_an_outcome_withdraws_the_cars_notice_and_keeps_the_record(env: Env) -> None:
    """Outside test (issue 18): a car recorded stolen kept its notice, installed when it came back, and its
    report replaced the record; a car recorded fixed at a dealer installed the OTA update too."""
    vins = [vin(n) for n in range(1, 4)]
    release = await _fleet(env, vins)
    cid = (await _launch(env, release))["id"]
    nonces = await env.nonces()
    stolen, dealer, other = vins
    await env.inject(report(cid, stolen, nonces[stolen], S.DEFERRED, deferrals=1))
    url = f"/api/v1/campaigns/{cid}/vehicles/{{}}/outcome"
    body = {"outcome": "unreachable", "reason": "stolen", "evidence": "police report 123"}
    assert (await env.client.post(url.format(stolen), json=body)).status_code == 200
    at_dealer = {"outcome": "remedied_at_dealer", "evidence": "RO-99", "reference": "RO-99"}
    assert (await env.client.post(url.format(dealer), json=at_dealer)).status_code == 200
    await env.runtime.dispatcher.idle()
    withdrawn = [
        w for m in env.publisher.messages if isinstance(w := parse_campaign_message(m.payload), CampaignWithdrawal)
    ]
    assert sorted(w.vin for w in withdrawn) == sorted([stolen, dealer])
    assert all(w.nonce == nonces[w.vin] for w in withdrawn)
    for car in (stolen, dealer):  # the Director assigns them nothing
        raw = await env.client.get(f"/repo/director/{car}/metadata/targets.json")
        assert Metadata[Targets].from_bytes(raw.content).signed.targets == {}
    # The cars confirm the withdrawal: the records stay what the operator recorded.
    for car in (stolen, dealer):
        await env.inject(report(cid, car, nonces[car], S.WITHDRAWN))
    rows = {r["vin"]: r for r in (await env.get_json(f"/api/v1/campaigns/{cid}/vehicles"))["items"]}
    assert (rows[stolen]["state"], rows[stolen]["reason"]) == ("unreachable", "stolen")
    assert rows[dealer]["state"] == "remedied_at_dealer" and rows[other]["state"] == "pending"
    # A car's report never replaces an operator's unreachable record (it was 'failed', then retried, then
    # installed: a stolen car updated and counted remedied), and a retry does not take it back in.
    await env.inject(report(cid, stolen, nonces[stolen], S.FAILED, reason=FailureReason.NO_DIRECTOR_ASSIGNMENT))
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/retry-failed")).json()["vehicles"] == 0
    rows = {r["vin"]: r for r in (await env.get_json(f"/api/v1/campaigns/{cid}/vehicles"))["items"]}
    assert (rows[stolen]["state"], rows[stolen]["reason"]) == ("unreachable", "stolen")
    # A withdrawal whose publishing was never confirmed is sent again as a withdrawal, never as the notice.
    with env.runtime.sessions.begin() as session:
        in_campaign = CampaignVehicle.campaign_id == cid
        session.execute(update(CampaignVehicle).where(in_campaign).values(notice_published_at=None))
    with env.runtime.sessions() as session:
        again = {m.vin: m.kind for m in campaigns.unpublished(session, "http://repo.test", env.clock())}
    assert again == {stolen: "withdrawal", dealer: "withdrawal", other: "campaign"}
