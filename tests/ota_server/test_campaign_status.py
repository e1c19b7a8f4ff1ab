"""When a campaign is done: ``done`` only once no car can change, and then the campaign says ``completed``.

Simulated time: the FakeClock moves when a test says so; reports go in through ingest.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from firmware_bundles.messages import FailureReason, ReportState
from ota_server.rollout.campaign_tick import CampaignTick
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import provision, recall_body, remedied, report, upload, vehicle, vin


async def _launch(env: Env, vins: list[str], rollout: dict[str, Any], **extra: Any) -> int:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in vins]})
    assert resp.status_code == 201, resp.text
    await provision(env.client, vins)
    release = (await upload(env.client)).json()["id"]
    recall = await env.client.post("/api/v1/recalls", json={**recall_body(release), "rollout": rollout, **extra})
    assert recall.status_code == 201, recall.text
    launched = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    assert launched.status_code == 201, launched.text
    await env.runtime.dispatcher.idle()
    return int(launched.json()["id"])


async def _failed(env: Env, cid: int, v: str, attempt: int = 1) -> None:
    """The car reports a transient failure (a retry is worth it)."""
    nonce = (await env.nonces())[v]
    await env.inject(report(cid, v, nonce, ReportState.FAILED, reason=FailureReason.DOWNLOAD_FAILED, attempt=attempt))


async def test_done_waits_for_a_retry_the_outage_kept_from_being_scheduled(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = vin(1)
    cid = await _launch(env, [v], {"max_retries": 1, "retry_backoff_s": 60})
    original = CampaignTick._schedule_retries
    outage = OperationalError("UPDATE campaign_vehicles", {}, Exception("could not connect to server"))

    def down(self: CampaignTick, *args: Any) -> None:
        raise outage

    monkeypatch.setattr(CampaignTick, "_schedule_retries", down)
    await _failed(env, cid, v)  # stored by ingest; the tick after it fails with the database
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["counts"]["failed"] == 1 and progress["retries_scheduled"] == 0
    assert not progress["done"]  # the plan still owes this car a retry
    assert progress["status"] == "active"
    monkeypatch.setattr(CampaignTick, "_schedule_retries", original)  # the database is back
    await env.tick()
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["retries_scheduled"] == 1 and not progress["done"]
    env.clock.advance(61)
    await env.tick()  # the retry: a new notice, a new attempt
    assert (await env.get_json(f"/api/v1/campaigns/{cid}/progress"))["counts"]["pending"] == 1
    await _failed(env, cid, v, attempt=2)
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["done"] and progress["status"] == "completed"  # no retry left: final


async def test_a_finished_campaign_says_completed_and_an_operator_retry_reopens_it(env: Env) -> None:
    vins = [vin(1), vin(2)]
    cid = await _launch(env, vins, {"max_retries": 0})
    nonces = await env.nonces()
    await env.inject(remedied(cid, vins[0], nonces[vins[0]]))
    assert (await env.get_json(f"/api/v1/campaigns/{cid}"))["status"] == "active"  # one car still out
    await env.inject(report(cid, vins[1], nonces[vins[1]], ReportState.FAILED, reason=FailureReason.DOWNLOAD_FAILED))
    campaign = await env.get_json(f"/api/v1/campaigns/{cid}")
    assert campaign["status"] == "completed" and campaign["status_reason"] == "every car is final"
    listed = (await env.client.get("/api/v1/campaigns")).json()["items"]
    assert [c["status"] for c in listed] == ["completed"]
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["done"] and progress["status"] == "completed"
    assert (await env.get_json(f"/api/v1/campaigns/{cid}/dashboard"))["status"] == "completed"  # the web page
    # Completed is not closed: an operator's retry sends the failed car a new notice.
    retried = await env.client.post(f"/api/v1/campaigns/{cid}/retry-failed")
    assert retried.status_code == 200, retried.text
    assert retried.json()["campaign"]["status"] == "active"
    await env.runtime.dispatcher.idle()
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["status"] == "active" and not progress["done"]
    assert progress["counts"]["pending"] == 1


async def test_a_completed_dynamic_campaign_reopens_for_a_car_registered_later(env: Env) -> None:
    cid = await _launch(env, [vin(1)], {}, dynamic=True)
    await env.inject(remedied(cid, vin(1), (await env.nonces())[vin(1)]))
    assert (await env.get_json(f"/api/v1/campaigns/{cid}"))["status"] == "completed"
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(2)))).status_code == 201
    await provision(env.client, [vin(2)])
    await env.tick()
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["population"] == 2 and progress["status"] == "active" and not progress["done"]
    assert vin(2) in await env.nonces()


async def test_a_timed_out_car_reporting_after_all_reopens_a_completed_campaign(env: Env) -> None:
    v = vin(1)
    cid = await _launch(env, [v], {"max_retries": 0, "device_timeout_s": 600})
    nonce = (await env.nonces())[v]
    await env.inject(report(cid, v, nonce, ReportState.DOWNLOADING))
    env.clock.advance(601)
    await env.tick()
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["counts"]["timed_out"] == 1 and progress["done"] and progress["status"] == "completed"
    await env.inject(report(cid, v, nonce, ReportState.INSTALLING))  # it was alive after all
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["status"] == "active" and not progress["done"]
    await env.inject(remedied(cid, v, nonce))
    assert (await env.get_json(f"/api/v1/campaigns/{cid}"))["status"] == "completed"
