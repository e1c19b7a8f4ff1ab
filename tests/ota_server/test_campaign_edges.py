"""The campaign engine's edges with a real agent on the server's own repositories (issue #20).

The agent runs in-process against the server's Director and Image repository (no HTTP), in
simulated time: its clock is the real time at the start (python-tuf checks expiry against the
real time) plus what its sleeps have simulated. Its reports reach the server through ingest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tuf.api.metadata import Metadata, Targets

from firmware_bundles import topics
from firmware_bundles.messages import (
    CampaignNotice,
    FailureReason,
    ManifestReason,
    ReportState,
    encode,
    parse_campaign_message,
)
from firmware_bundles.report_signing import load_report_signer
from firmware_bundles.window import WINDOW_FIELD, parse_hold
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import REPORT_KEYS, recall_body, upload, vehicle, vin
from tests.ota_server.test_cli_ops import ota, wired  # noqa: F401 (wired: a fixture)
from tests.ota_server.test_multi_ecu_recalls import _agent
from tests.ota_server.test_rollout import _launch as _launch_plan
from tests.ota_server.test_rollout import _notified_vins, _progress, _run_to, _with_rollback_release
from vehicle_agent.link import FakeLink
from vehicle_agent.vehicle import FakeVehicle, Reading

S = ReportState
TOKYO = ZoneInfo("Asia/Tokyo")


class SimTime:
    """The agent's sleeps move its clock (and monotonic time) at once; ``on_pause`` scripts the world."""

    def __init__(self, start: datetime, on_pause: Callable[[int], Any]) -> None:
        self.start = start
        self.seconds = 0.0
        self.pauses = 0
        self._on_pause = on_pause

    def clock(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return self.seconds

    async def sleep(self, seconds: float) -> None:
        self.pauses += 1
        assert self.pauses <= 10, "the car is still waiting after 10 pauses"
        self.seconds += seconds
        await self._on_pause(self.pauses)


async def _car_with_key(env: Env, car: dict[str, Any]) -> bytes:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [car]})
    assert resp.status_code == 201, resp.text
    resp = await env.client.post(
        "/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": [car["vin"]]}
    )
    assert resp.status_code == 200, resp.text
    key: bytes = resp.json()["identities"][0]["report_private_key"].encode()
    return key


async def _launch(env: Env, release_id: int, **extra: Any) -> int:
    recall = await env.client.post("/api/v1/recalls", json={**recall_body(release_id, "24V-900"), **extra})
    assert recall.status_code == 201, recall.text
    operator = await env.headers_for("operator-edges", "operator")
    launched = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch", headers=operator)
    assert launched.status_code == 201, launched.text
    await env.runtime.dispatcher.idle()
    return int(launched.json()["id"])


def _notice(env: Env, vin_: str, campaign_id: int | None = None) -> CampaignNotice:
    return next(
        m
        for m in (parse_campaign_message(p.payload) for p in env.publisher.messages)
        if isinstance(m, CampaignNotice) and m.vin == vin_ and campaign_id in (None, m.campaign_id)
    )


async def test_a_deferred_car_installs_only_inside_its_window(env: Env, tmp_path: Path) -> None:
    """Notified inside its window (now +- 30 minutes in Tokyo), the car is not parked; by the time
    it is, the window has closed: it downloads, defers ``outside_window`` and installs when the
    window opens the next day. The API and the timeline say when and which window."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    env.clock.now = now
    car = {**vehicle(vin(1)), "time_zone": "Asia/Tokyo"}
    key = await _car_with_key(env, car)
    release = (await upload(env.client)).json()["id"]
    local = now.astimezone(TOKYO)
    opens, closes = (local - timedelta(minutes=30)).time(), (local + timedelta(minutes=30)).time()
    window = {"start": opens.strftime("%H:%M"), "end": closes.strftime("%H:%M")}
    cid = await _launch(env, release, rollout={"windows": [window]})

    # the Director signed the car's window in the car's own zone
    raw = await env.client.get(f"/repo/director/{car['vin']}/metadata/targets.json")
    signed = Metadata[Targets].from_bytes(raw.content).signed.unrecognized_fields[WINDOW_FIELD]
    assert signed == {"time_zone": "Asia/Tokyo", "windows": [{"days": list(range(7)), **window}]}

    seen: dict[str, Any] = {}
    link_box: list[FakeLink] = []
    delivered = 0

    async def deliver() -> None:
        nonlocal delivered
        reports = link_box[0].reports[delivered:]
        delivered += len(reports)
        await env.inject(*((topics.status_topic(car["vin"]), encode(r)) for r in reports))

    async def on_pause(n: int) -> None:
        await deliver()
        if n == 1:  # deferred: not parked. Two hours later it is, and the window has closed.
            time.seconds += 2 * 3600
            vehicle_state.set(parked=True)
        elif n == 2:  # waiting for the window: what the operator sees
            status = (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()
            seen["status"] = next(c for c in status["campaigns"] if c["campaign_id"] == cid)
            timeline = await env.client.get(f"/api/v1/vehicles/{car['vin']}/timeline")
            assert timeline.status_code == 200, timeline.text
            seen["timeline"] = timeline.text

    time = SimTime(now, on_pause)
    vehicle_state = FakeVehicle(Reading(parked=False))
    agent, link = _agent(
        env,
        car,
        key,
        tmp_path,
        clock=time.clock,
        sleep=time.sleep,
        monotonic=time.monotonic,
        vehicle=vehicle_state,
    )
    link_box.append(link)

    assert await agent.handle(_notice(env, car["vin"])) is S.REMEDIED, link.reports[-1].detail
    await deliver()

    waiting = seen["status"]
    assert waiting["state"] == "deferred", waiting
    next_open = datetime.combine(local.date() + timedelta(days=1), opens, tzinfo=TOKYO)
    if (local - timedelta(minutes=30)).date() != local.date():  # opened before local midnight
        next_open = datetime.combine(local.date(), opens, tzinfo=TOKYO)
    assert datetime.fromisoformat(waiting["next_try_at"]) == next_open
    assert waiting["window"] == f"{window['start']}-{window['end']} every day (Asia/Tokyo)"
    held = parse_hold(waiting["detail"])
    assert held is not None and held.next_try_at == next_open
    assert "Waiting for the car's maintenance window" in seen["timeline"]

    states = [r.state for r in link.reports]
    assert states.index(S.DEFERRED) < states.index(S.DOWNLOADING)  # first held for not being parked
    installing = next(r for r in link.reports if r.state is S.INSTALLING)
    assert next_open <= installing.sent_at < next_open + timedelta(hours=1)
    progress = (await env.client.get(f"/api/v1/campaigns/{cid}/progress")).json()
    assert progress["counts"]["remedied"] == 1, progress


async def test_a_car_offline_past_its_metadata_expiry_comes_back_and_is_remedied(env: Env, tmp_path: Path) -> None:
    """Launched a month ago; the car was away. It comes back before the server's re-signer has run:
    the Image repository's timestamp it is served has lapsed. It defers ``metadata_expired``, asks
    again after a backoff (the re-signer has run meanwhile) and is remedied in the same attempt,
    with no new notice and no operator action."""
    today = datetime.now(UTC).replace(microsecond=0)
    env.clock.now = today - timedelta(days=30)
    car = vehicle(vin(2))
    key = await _car_with_key(env, car)
    release = (await upload(env.client)).json()["id"]
    cid = await _launch(env, release)
    env.clock.now = today
    refresher = env.runtime.refresher

    async def on_pause(n: int) -> None:
        if n == 1:  # the server's re-signer catches up while the car backs off
            assert refresher is not None
            assert await asyncio.to_thread(refresher.run_once)  # re-signed the lapsed timestamp

    time = SimTime(today, on_pause)
    agent, link = _agent(env, car, key, tmp_path, clock=time.clock, sleep=time.sleep, monotonic=time.monotonic)
    assert await agent.handle(_notice(env, car["vin"])) is S.REMEDIED, link.reports[-1].detail
    await env.inject(*((topics.status_topic(car["vin"]), encode(r)) for r in link.reports))

    stale = [r for r in link.reports if r.state is S.DEFERRED]
    assert len(stale) == 1 and stale[0].detail.startswith("metadata_expired: image repository"), stale
    assert {r.attempt for r in link.reports} == {1}
    status = (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()
    [campaign] = [c for c in status["campaigns"] if c["campaign_id"] == cid]
    assert campaign["state"] == "remedied"
    assert any(h["state"] == "deferred" and h["detail"].startswith("metadata_expired") for h in campaign["history"])
    assert [n.vin for n in (parse_campaign_message(p.payload) for p in env.publisher.messages)] == [car["vin"]]


async def _dynamic_campaign(env: Env, first: dict[str, Any], **population: Any) -> int:
    """A dynamic recall launched with ``first`` its one matching car (a launch needs one)."""
    await _car_with_key(env, first)
    release = (await upload(env.client)).json()["id"]
    return await _launch(env, release, dynamic=True, population=population)


async def _remedied_by_its_agent(env: Env, car: dict[str, Any], key: bytes, state_dir: Path, cid: int) -> None:
    agent, link = _agent(env, car, key, state_dir)
    assert await agent.handle(_notice(env, car["vin"])) is S.REMEDIED, link.reports[-1].detail
    await env.inject(*((topics.status_topic(car["vin"]), encode(r)) for r in link.reports))
    progress = (await env.client.get(f"/api/v1/campaigns/{cid}/progress")).json()
    assert progress["counts"]["remedied"] == 1, progress


async def test_a_car_whose_model_year_is_corrected_joins_the_dynamic_campaign_it_now_matches(
    env: Env, tmp_path: Path
) -> None:
    env.clock.now = datetime.now(UTC)
    car = vehicle(vin(3), model_year=2022)
    key = await _car_with_key(env, car)
    cid = await _dynamic_campaign(env, vehicle(vin(13), model_year=2023), models=["Sedan"], model_years={"min": 2023})
    assert (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()["campaigns"] == []

    cleared = await env.client.patch(f"/api/v1/vehicles/{car['vin']}", json={"model_year": None})
    assert cleared.status_code == 422, cleared.text
    corrected = await env.client.patch(f"/api/v1/vehicles/{car['vin']}", json={"model_year": 2023})
    assert corrected.status_code == 200, corrected.text
    await env.tick()  # the tick the correction asked for

    assert [
        c["campaign_id"] for c in (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()["campaigns"]
    ] == [cid]
    await _remedied_by_its_agent(env, car, key, tmp_path, cid)


async def test_a_car_reporting_a_version_the_dynamic_campaign_covers_joins_it(env: Env, tmp_path: Path) -> None:
    """Registered as running 1.0.5 (outside the recall's versions), the car's own signed manifest says
    1.0.0 (e.g. a workshop flashed it back): it joins the dynamic campaign and is remedied."""
    env.clock.now = datetime.now(UTC)
    car = vehicle(vin(4), installed_version="1.0.5")
    key = await _car_with_key(env, car)
    cid = await _dynamic_campaign(env, vehicle(vin(14)), models=["Sedan"], installed_versions={"max": "1.0.0"})
    assert (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()["campaigns"] == []

    runs_old = {**car, "ecus": [{**car["ecus"][0], "installed_version": "1.0.0"}]}
    agent, link = _agent(env, runs_old, key, tmp_path)
    assert await agent.send_manifest(ManifestReason.START)
    await env.inject(*((topics.status_topic(car["vin"]), encode(m)) for m in link.manifests))
    await env.tick()

    assert [
        c["campaign_id"] for c in (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()["campaigns"]
    ] == [cid]
    await _remedied_by_its_agent(env, runs_old, key, tmp_path, cid)


async def test_a_manifest_with_a_version_new_to_the_record_asks_for_a_tick_itself(env: Env, tmp_path: Path) -> None:
    """No periodic tick here: the batch that stored the manifest asks the engine to look, so the car
    joins the dynamic campaign it now matches at once (before: only at the next periodic tick)."""
    env.clock.now = datetime.now(UTC)
    car = vehicle(vin(5), installed_version="1.0.5")
    key = await _car_with_key(env, car)
    cid = await _dynamic_campaign(env, vehicle(vin(15)), models=["Sedan"], installed_versions={"max": "1.0.0"})
    runs_old = {**car, "ecus": [{**car["ecus"][0], "installed_version": "1.0.0"}]}
    agent, link = _agent(env, runs_old, key, tmp_path)
    assert await agent.send_manifest(ManifestReason.START)
    await env.inject(*((topics.status_topic(car["vin"]), encode(m)) for m in link.manifests))  # no env.tick()

    status = (await env.client.get(f"/api/v1/vehicles/{car['vin']}/status")).json()
    assert [c["campaign_id"] for c in status["campaigns"]] == [cid]


# -- rollback reach ----------------------------------------------------------------------------


async def _two_waves_tripped(env: Env, reach: str | None) -> tuple[int, list[str], list[str]]:
    """Wave 1 (2 cars) remedied, wave 2 opens; in wave 2, 2 remedied and 3 fail: the threshold trips.

    Returns the campaign and the remedied cars of wave 1 and of wave 2."""
    vins = [vin(n) for n in range(20, 30)]
    release, rollback_release = await _with_rollback_release(env, vins)
    rollout = {
        "waves": [{"cars": 2}, {"percent": 100}],
        "success_threshold_percent": 100,
        "error_threshold_count": 3,
        "max_retries": 0,
        "rollback_release_id": rollback_release,
        **({"rollback_reach": reach} if reach else {}),
    }
    cid = (await _launch_plan(env, release, rollout=rollout))["id"]
    first = sorted(_notified_vins(env, cid))
    await _run_to(env, cid, first, S.REMEDIED)
    second = sorted(_notified_vins(env, cid) - set(first))
    assert len(second) == 8
    await _run_to(env, cid, second[:2], S.REMEDIED)
    await _run_to(env, cid, second[2:5], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    await env.runtime.dispatcher.idle()
    return cid, first, second[:2]


async def test_rollback_reach_campaign_rolls_back_the_earlier_waves_remedied_cars_too(env: Env) -> None:
    cid, first, second = await _two_waves_tripped(env, "campaign")
    progress = await _progress(env, cid)
    assert progress["status"] == "paused"
    rid = progress["rollback_campaign_id"]
    assert rid is not None and "remedied cars of the campaign" in progress["status_reason"]
    assert _notified_vins(env, rid) == set(first + second)
    child = await env.get_json(f"/api/v1/campaigns/{rid}")
    assert child["parent_campaign_id"] == cid and child["population"] == 4


async def test_rollback_reach_wave_stays_the_default(env: Env) -> None:
    cid, _first, second = await _two_waves_tripped(env, None)
    rid = (await _progress(env, cid))["rollback_campaign_id"]
    assert _notified_vins(env, rid) == set(second)


async def test_rollback_reach_none_rolls_back_nothing_until_an_operator_starts_it(env: Env) -> None:
    cid, first, second = await _two_waves_tripped(env, "none")
    progress = await _progress(env, cid)
    assert progress["status"] == "paused" and progress["rollback_campaign_id"] is None
    assert "rollback_reach is none" in progress["status_reason"]

    started = await env.client.post(f"/api/v1/campaigns/{cid}/rollback", json={"reason": "bad release"})
    assert started.status_code == 201, started.text
    child = started.json()
    assert child["kind"] == "rollback" and child["parent_campaign_id"] == cid
    await env.runtime.dispatcher.idle()
    assert _notified_vins(env, child["id"]) == set(first + second)  # 'none' by hand: the whole campaign
    assert (await _progress(env, cid))["rollback_campaign_id"] == child["id"]
    again = await env.client.post(f"/api/v1/campaigns/{cid}/rollback", json={})
    assert again.status_code == 409 and f"rollback campaign {child['id']}" in again.json()["detail"]


async def test_an_operator_rollback_needs_a_paused_campaign_and_a_rollback_release(env: Env) -> None:
    cars = [vin(n) for n in range(40, 42)]
    release, rollback_release = await _with_rollback_release(env, cars)
    cid = (await _launch_plan(env, release, rollout={"rollback_release_id": rollback_release}))["id"]
    active = await env.client.post(f"/api/v1/campaigns/{cid}/rollback", json={"reach": "wave"})
    assert active.status_code == 409 and "pause it first" in active.json()["detail"]
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/pause", json={})).status_code == 200
    nothing = await env.client.post(f"/api/v1/campaigns/{cid}/rollback", json={"reach": "wave"})
    assert nothing.status_code == 409 and "no car of wave 1 is remedied" in nothing.json()["detail"]
    bad = await env.client.post(f"/api/v1/campaigns/{cid}/rollback", json={"reach": "everything"})
    assert bad.status_code == 422


async def test_rollback_reach_campaign_without_a_rollback_release_is_refused(env: Env) -> None:
    release = (await upload(env.client)).json()["id"]
    body = {**recall_body(release, "24V-901"), "rollout": {"rollback_reach": "campaign"}}
    refused = await env.client.post("/api/v1/recalls", json=body)
    assert refused.status_code == 422 and "rollback_release_id" in refused.text
    body["rollout"] = {"rollback_reach": "sideways"}
    assert (await env.client.post("/api/v1/recalls", json=body)).status_code == 422


@pytest.mark.usefixtures("wired")  # the CLI talks to this server
async def test_ota_campaigns_rollback_starts_it_from_the_cli(env: Env) -> None:
    cid, _first, second = await _two_waves_tripped(env, "none")
    started = await ota(env, "campaigns", "rollback", str(cid), "--reach", "wave", "--reason", "bad", "--json")
    assert started.exit_code == 0, started.output
    child = json.loads(started.stdout)
    assert child["parent_campaign_id"] == cid and child["population"] == len(second)
    again = await ota(env, "campaigns", "rollback", str(cid))
    assert again.exit_code == 1 and "409" in again.stderr


async def test_a_real_car_of_an_earlier_wave_is_rolled_back_under_reach_campaign(env: Env, tmp_path: Path) -> None:
    """The canary's car (a real agent) installs the fix; the next wave trips; under rollback_reach
    'campaign' the canary's car gets the rollback release too, and installs it."""
    env.clock.now = datetime.now(UTC)
    cars = [vehicle(vin(n)) for n in range(50, 55)]
    keys = {car["vin"]: await _car_with_key(env, car) for car in cars}
    for v, key in keys.items():
        REPORT_KEYS[v] = load_report_signer(key)
    release = (await upload(env.client)).json()["id"]
    rollback_release = (await upload(env.client, version="1.0.1", counter=3)).json()["id"]
    rollout = {
        "waves": [{"cars": 1}, {"percent": 100}],
        "success_threshold_percent": 100,
        "error_threshold_count": 2,
        "max_retries": 0,
        "rollback_release_id": rollback_release,
        "rollback_reach": "campaign",
    }
    cid = await _launch(env, release, rollout=rollout)
    [canary] = _notified_vins(env, cid)
    car = next(c for c in cars if c["vin"] == canary)
    agent, link = _agent(env, car, keys[canary], tmp_path)
    assert await agent.handle(_notice(env, canary, cid)) is S.REMEDIED, link.reports[-1].detail
    await env.inject(*((topics.status_topic(canary), encode(r)) for r in link.reports))
    await env.runtime.dispatcher.idle()

    second = sorted(_notified_vins(env, cid) - {canary})
    assert len(second) == 4
    await _run_to(env, cid, second[:1], S.REMEDIED)
    await _run_to(env, cid, second[1:3], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED)
    await env.runtime.dispatcher.idle()
    rid = (await _progress(env, cid))["rollback_campaign_id"]
    assert rid is not None and _notified_vins(env, rid) == {canary, second[0]}

    link.reports.clear()
    assert await agent.handle(_notice(env, canary, rid)) is S.REMEDIED, link.reports[-1].detail
    assert link.reports[-1].installed_version == "1.0.1"
    await env.inject(*((topics.status_topic(canary), encode(r)) for r in link.reports))
    rolled = await _progress(env, rid)
    assert rolled["counts"]["remedied"] == 1 and rolled["kind"] == "rollback"
    assert rolled["parent_campaign_id"] == cid
