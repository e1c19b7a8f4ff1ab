"""The fleet, managed: the filtered and paged list, PATCH of what may change, decommissioning."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, get_args

from sqlalchemy import select

from firmware_bundles import topics
from firmware_bundles.messages import CampaignWithdrawal, FailureReason, ReportState, parse_campaign_message
from ota_server.api.vehicles import DiscrepancyFilter
from ota_server.db.models import CampaignVehicle, Discrepancy, Vehicle
from ota_server.services import campaigns, inventory
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, recall_body, report, upload, vehicle, vin
from tests.ota_server.test_rollout import _launch, _notified_vins, _progress, _run_to, _with_rollback_release


async def _register(env: Env, cars: list[dict[str, Any]]) -> None:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 201, resp.text


async def _vins(env: Env, **params: Any) -> list[str]:
    """Every VIN the list gives for ``params``, walking its pages."""
    seen: list[str] = []
    cursor: str | None = None
    while True:
        resp = await env.client.get("/api/v1/vehicles", params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        seen += [car["vin"] for car in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


async def test_cursor_walk_sees_every_car_once_in_vin_order(either_env: Env) -> None:
    env = either_env
    vins = [vin(n) for n in range(1, 24)]
    await _register(env, [vehicle(v) for v in vins])
    first = (await env.client.get("/api/v1/vehicles", params={"limit": 5})).json()
    assert len(first["items"]) == 5 and first["next_cursor"]
    # A car registered mid-walk, sorting after the page already read, is met once later.
    late = vin(99, wmi="ZZZ")
    await _register(env, [vehicle(late)])
    seen = [car["vin"] for car in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        body = (await env.client.get("/api/v1/vehicles", params={"limit": 5, "cursor": cursor})).json()
        assert len(body["items"]) <= 5
        seen += [car["vin"] for car in body["items"]]
        cursor = body["next_cursor"]
    assert seen == sorted([*vins, late])
    exact = (await env.client.get("/api/v1/vehicles", params={"limit": 24})).json()
    assert len(exact["items"]) == 24 and exact["next_cursor"] is None  # a full last page says it is the last


async def test_filters_each_narrow_the_list(either_env: Env) -> None:
    env = either_env
    cars = [
        vehicle(vin(1), model="Sedan", model_year=2021),
        vehicle(vin(2), model="Sedan", model_year=2022, installed_version="1.1.0"),
        vehicle(vin(3), model="Wagon", model_year=2022),
        vehicle(
            vin(4),
            model="Wagon",
            model_year=2023,
            production_date=date(2023, 1, 1),
            extra_ecus=[{"serial": "T-1", "hardware_id": "telematics", "installed_version": "7.0"}],
        ),
    ]
    await _register(env, cars)
    assert await _vins(env, model="Wagon") == sorted([vin(3), vin(4)])
    assert await _vins(env, model_year=2022) == sorted([vin(2), vin(3)])
    assert await _vins(env, model="Sedan", model_year=2022) == [vin(2)]
    assert await _vins(env, hardware_id="telematics") == [vin(4)]
    assert await _vins(env, installed_version="1.1.0") == [vin(2)]
    assert await _vins(env, installed_version="7.0", hardware_id="ecu-main") == []  # the same ECU must hold both
    assert await _vins(env, installed_version="7.0", hardware_id="telematics") == [vin(4)]
    assert await _vins(env, not_seen_since="2026-01-01T00:00:00Z") == sorted(v["vin"] for v in cars)  # never seen
    assert await _vins(env, model="Nothing") == []


async def test_recall_and_campaign_state_filters(env: Env) -> None:
    vins = [vin(n) for n in range(1, 5)]
    campaign = await launched(env.client, vins[:3])
    await _register(env, [vehicle(vins[3], model="Wagon")])
    nonces = await env.nonces()
    await env.inject(report(campaign["id"], vins[0], nonces[vins[0]], ReportState.DOWNLOADING))
    assert await _vins(env, recall="24V-123") == sorted(vins[:3])
    assert await _vins(env, recall=str(campaign["recall_id"])) == sorted(vins[:3])
    assert await _vins(env, campaign=campaign["id"], state="downloading") == [vins[0]]
    assert await _vins(env, state="downloading") == [vins[0]]
    # Before launch, a recall's cars are its population as it stands now.
    release = (await upload(env.client, version="1.2.0", counter=3)).json()
    body = recall_body(release["id"], number="24V-124", models=["Wagon"])
    assert (await env.client.post("/api/v1/recalls", json=body)).status_code == 201
    assert await _vins(env, recall="24v-124") == [vins[3]]
    missing = await env.client.get("/api/v1/vehicles", params={"recall": "25V-999"})
    assert missing.status_code == 404 and "25V-999" in missing.json()["detail"]


async def test_a_cursor_the_server_did_not_give_is_422(env: Env) -> None:
    for cursor in ("nonsense!", "dmluOmFiYw", "eHl6OkFCQw"):  # junk, lower case after the prefix, wrong prefix
        resp = await env.client.get("/api/v1/vehicles", params={"cursor": cursor})
        assert resp.status_code == 422, (cursor, resp.text)
        assert "cursor" in resp.json()["detail"]


async def test_patch_changes_what_may_change_and_refuses_the_rest_by_name(env: Env) -> None:
    v = vin(1)
    await _register(env, [vehicle(v)])
    url = f"/api/v1/vehicles/{v}"
    resp = await env.client.patch(url, json={"time_zone": "Europe/Berlin", "market": "DE", "owner_contact": "fleet@x"})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["time_zone"], resp.json()["market"], resp.json()["owner_contact"]) == (
        "Europe/Berlin",
        "DE",
        "fleet@x",
    )
    cleared = await env.client.patch(url, json={"owner_contact": None})
    assert cleared.json()["owner_contact"] is None and cleared.json()["market"] == "DE"  # the rest unchanged
    refused = await env.client.patch(url, json={"model": "Wagon", "vin": vin(2), "market": "FR"})
    assert refused.status_code == 422
    assert "model, vin cannot be changed" in refused.json()["detail"]
    assert "time_zone, market, owner_contact" in refused.json()["detail"]
    bad_zone = await env.client.patch(url, json={"time_zone": "Mars/Olympus"})
    assert bad_zone.status_code == 422
    stored = (await env.client.get(url)).json()
    assert (stored["model"], stored["market"], stored["time_zone"]) == ("Sedan", "DE", "Europe/Berlin")
    entries = (await env.client.get("/api/v1/audit")).json()["items"]
    patches = [(e["status"], e["target"].get("changed")) for e in entries if e["method"] == "PATCH"]
    assert patches == [(200, "market,owner_contact,time_zone"), (200, "owner_contact"), (422, None), (422, None)]


async def test_decommission_takes_the_car_out_of_an_open_campaign_and_future_populations(either_env: Env) -> None:
    env = either_env
    vins = [vin(n) for n in range(1, 4)]
    campaign = await launched(env.client, vins)
    cid = campaign["id"]
    await env.nonces()  # every car was notified at launch
    env.publisher.messages.clear()
    resp = await env.client.post(f"/api/v1/vehicles/{vins[1]}/decommission", json={"reason": "scrapped"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["removed_from"] == [cid]
    assert resp.json()["vehicle"]["decommission_reason"] == "scrapped"
    assert resp.json()["vehicle"]["decommissioned_at"] is not None
    # The open campaign: unreachable (scrapped), told so, and counted as such in the reports.
    await env.runtime.dispatcher.idle()
    sent = [parse_campaign_message(m.payload) for m in env.publisher.messages]
    assert [(type(m), m.vin) for m in sent] == [(CampaignWithdrawal, vins[1])]
    assert env.publisher.messages[0].topic == topics.campaign_topic(vins[1])
    progress = await env.get_json(f"/api/v1/campaigns/{cid}/progress")
    assert progress["unreachable_by_reason"] == {"scrapped": 1}
    report_body = await env.get_json(f"/api/v1/reports/recalls/{campaign['recall_id']}/completion?format=json")
    summary: Any = report_body["summary"]
    assert summary["unreachable_by_reason"]["scrapped"] == 1
    feed: Any = await env.get_json(f"/api/v1/reports/recalls/{campaign['recall_id']}/vin-status?format=json")
    assert {r["vin"]: (r["status"], r["reason"]) for r in feed["rows"]}[vins[1]] == ("unreachable", "scrapped")
    # A future recall for the same cars leaves it out, and so does its launch.
    release = (await upload(env.client, version="1.2.0", counter=3)).json()
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release["id"], number="24V-200"))
    assert recall.json()["affected_count"] == 2
    launched_again = (await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")).json()
    assert await _vins(env, campaign=launched_again["id"]) == sorted([vins[0], vins[2]])
    assert await _vins(env, decommissioned=True) == [vins[1]]
    assert await _vins(env, decommissioned=False) == sorted([vins[0], vins[2]])
    again = await env.client.post(f"/api/v1/vehicles/{vins[1]}/decommission", json={"reason": "stolen"})
    assert again.status_code == 409 and "decommissioned" in again.json()["detail"]


async def test_decommission_is_refused_while_the_car_installs_and_other_needs_words(env: Env) -> None:
    vins = [vin(n) for n in range(1, 3)]
    campaign = await launched(env.client, vins)
    nonces = await env.nonces()
    await env.inject(report(campaign["id"], vins[0], nonces[vins[0]], ReportState.DOWNLOADING))
    busy = await env.client.post(f"/api/v1/vehicles/{vins[0]}/decommission", json={"reason": "exported"})
    assert busy.status_code == 409 and "installing" in busy.json()["detail"]
    assert (await env.client.get(f"/api/v1/vehicles/{vins[0]}")).json()["decommissioned_at"] is None  # nothing stored
    vague = await env.client.post(f"/api/v1/vehicles/{vins[1]}/decommission", json={"reason": "other"})
    assert vague.status_code == 422 and "detail" in vague.json()["detail"]
    told = await env.client.post(
        f"/api/v1/vehicles/{vins[1]}/decommission", json={"reason": "other", "detail": "Flood damage, total loss"}
    )
    assert told.status_code == 200, told.text
    assert told.json()["vehicle"]["decommission_detail"] == "Flood damage, total loss"


async def test_a_withdrawal_lost_in_a_restart_is_sent_again_never_the_notice(env: Env) -> None:
    """The server stopped before the broker confirmed a decommissioned car's withdrawal: the next start
    sends the withdrawal again (it sent the campaign notice, which would have called the car back)."""
    v = vin(1)
    campaign = await launched(env.client, [v])
    await env.nonces()
    resp = await env.client.post(f"/api/v1/vehicles/{v}/decommission", json={"reason": "exported"})
    assert resp.status_code == 200, resp.text
    await env.runtime.dispatcher.idle()
    with env.runtime.sessions() as session:
        cv = session.get(CampaignVehicle, (campaign["id"], v))
        assert cv is not None and cv.notice_published_at is not None
        cv.notice_published_at = None  # as if the server stopped before the broker's confirmation
        session.commit()
        again = campaigns.unpublished(session, env.runtime.repo_url, env.clock())
    assert [(type(m), m.vin) for m in again] == [(CampaignWithdrawal, v)]


async def test_not_seen_since_counts_silent_and_never_seen_cars(either_env: Env) -> None:
    env = either_env
    await _register(env, [vehicle(vin(1)), vehicle(vin(2))])
    with env.runtime.sessions() as session:
        car = session.scalar(select(Vehicle).where(Vehicle.vin == vin(1)))
        assert car is not None
        car.last_seen = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        session.commit()
    assert await _vins(env, not_seen_since="2026-02-01T00:00:00Z") == [vin(2)]  # vin(1) spoke since
    assert await _vins(env, not_seen_since="2026-04-01T00:00:00+02:00") == sorted([vin(1), vin(2)])
    assert await _vins(env, not_seen_since="2026-03-01T12:00:01") == sorted([vin(1), vin(2)])  # no zone: UTC
    for junk in ("0.5", "yesterday"):
        resp = await env.client.get("/api/v1/vehicles", params={"not_seen_since": junk})
        assert resp.status_code == 422 and "ISO 8601" in resp.json()["detail"], resp.text


async def test_discrepancy_filter_any_or_by_kind(either_env: Env) -> None:
    env = either_env
    await _register(env, [vehicle(vin(n)) for n in (1, 2, 3)])
    when = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with env.runtime.sessions() as session:
        for car, kind in ((vin(1), inventory.UNASSIGNED_IMAGE), (vin(2), inventory.UNKNOWN_VERSION)):
            finding = Discrepancy(
                vin=car,
                ecu_serial=f"S-{car[-6:]}",
                hardware_id="ecu-main",
                kind=kind,
                version="9.9.9",
                detail="test finding",
                manifest_counter=1,
                found_at=when,
                last_seen_at=when,
            )
            session.add(finding)
        session.commit()
    assert await _vins(env, discrepancy="any") == sorted([vin(1), vin(2)])
    assert await _vins(env, discrepancy="unassigned_image") == [vin(1)]
    assert await _vins(env, discrepancy="hardware_mismatch") == []
    # The filter's kinds are the inventory's, and only those.
    assert set(get_args(DiscrepancyFilter)) == {"any", *inventory.KINDS}
    assert (await env.client.get("/api/v1/vehicles", params={"discrepancy": "gremlins"})).status_code == 422


async def test_a_decommissioned_cars_late_report_is_kept_but_does_not_bring_it_back(env: Env) -> None:
    """An exported car still runs its agent: a report sent with its old nonce is recorded in its
    history, and the car stays unreachable (back in flight, it would time out and be notified again)."""
    v = vin(1)
    campaign = await launched(env.client, [v])
    nonce = (await env.nonces())[v]
    resp = await env.client.post(f"/api/v1/vehicles/{v}/decommission", json={"reason": "exported"})
    assert resp.status_code == 200, resp.text
    await env.inject(report(campaign["id"], v, nonce, ReportState.NOTIFIED))
    status = await env.get_json(f"/api/v1/vehicles/{v}/status")
    (car,) = status["campaigns"]
    assert (car["state"], car["reason"]) == ("unreachable", "exported")
    assert car["history"][-1]["state"] == "notified" and car["history"][-1]["source"] == "car"


async def test_a_rollback_campaign_leaves_out_a_decommissioned_car(env: Env) -> None:
    """A remedied car keeps its record when decommissioned, but a tripped wave's rollback is not sent to it."""
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
    await _run_to(env, cid, canary[:2], ReportState.REMEDIED)
    gone = await env.client.post(f"/api/v1/vehicles/{canary[0]}/decommission", json={"reason": "scrapped"})
    assert gone.status_code == 200 and gone.json()["removed_from"] == []  # remedied: its record stays
    await _run_to(env, cid, canary[2:], ReportState.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    await env.runtime.dispatcher.idle()
    rid = (await _progress(env, cid))["rollback_campaign_id"]
    assert rid is not None
    assert _notified_vins(env, rid) == {canary[1]}
