"""A fault in one campaign's tick stays in that campaign: paused with the reason, logged once.

The bad plans are written straight into the database (the API refuses them now), as a
database filed before that check, or edited by hand, would hold them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from ota_server.db.models import Recall
from ota_server.rollout.campaign_tick import CampaignTick
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import provision, recall_body, remedied, upload, vehicle, vin

# A window that never contains the test clock's noon (UTC), so the bad campaign has cars left to release.
_QUIET = {"windows": [{"start": "01:00", "end": "02:00"}]}
BAD_PLANS = {
    "overflowing timeout": ({}, {"device_timeout_s": 1e308}),
    "window with a UTC offset": (_QUIET, {"windows": [{"start": "01:00+05:00", "end": "05:00"}]}),
    "plan that no longer validates": ({}, {"max_retries": 999}),
}


async def _two_campaigns(env: Env, bad_plan: dict[str, Any], filed_plan: dict[str, Any]) -> tuple[int, int]:
    """A good campaign to two sedans and one to two coupes whose stored plan is then made ``bad_plan``."""
    sedans, coupes = [vin(1), vin(2)], [vin(3), vin(4)]
    cars = [vehicle(v) for v in sedans] + [vehicle(v, model="Coupe") for v in coupes]
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})).status_code == 201
    await provision(env.client, sedans + coupes)
    release = (await upload(env.client)).json()["id"]
    ids = []
    for number, model, rollout in (("24V-001", "Sedan", {}), ("24V-002", "Coupe", filed_plan)):
        recall = await env.client.post(
            "/api/v1/recalls", json={**recall_body(release, number, models=[model]), "rollout": rollout}
        )
        assert recall.status_code == 201, recall.text
        launched = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
        assert launched.status_code == 201, launched.text
        ids.append(launched.json()["id"])
    with env.runtime.sessions() as session:
        session.execute(update(Recall).where(Recall.campaign_number == "24V-002").values(rollout=bad_plan))
        session.commit()
    return ids[0], ids[1]


def _errors_about(caplog: pytest.LogCaptureFixture, campaign_id: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and f"campaign {campaign_id} " in r.getMessage()]


@pytest.mark.parametrize("plans", BAD_PLANS.values(), ids=BAD_PLANS.keys())
async def test_a_campaign_whose_tick_fails_is_paused_and_the_others_complete(
    env: Env, caplog: pytest.LogCaptureFixture, plans: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    filed, bad_plan = plans
    good, bad = await _two_campaigns(env, bad_plan, filed)
    caplog.set_level(logging.INFO, logger="ota_server.rollout.coordinator")
    for _ in range(3):
        env.clock.advance(2)
        await env.tick()  # never raises, whatever one campaign does
    progress = await env.get_json(f"/api/v1/campaigns/{bad}/progress")
    assert progress["status"] == "paused"
    reason = str(progress["status_reason"])
    assert reason.startswith("internal error in tick: ") and "Error" in reason
    assert not progress["done"]
    assert len(_errors_about(caplog, bad)) == 1  # logged once, not at every tick
    dashboard = await env.get_json(f"/api/v1/campaigns/{bad}/dashboard")  # the web page shows it too
    assert dashboard["status"] == "paused"
    # The good campaign was never held up: its cars finish and it completes.
    nonces = await env.nonces()
    await env.inject(*(remedied(good, v, nonces[v]) for v in (vin(1), vin(2))))
    progress = await env.get_json(f"/api/v1/campaigns/{good}/progress")
    assert progress["done"] and progress["status"] == "completed"
    # An operator resuming the broken campaign gets it paused again, and one more log line.
    resumed = await env.client.post(f"/api/v1/campaigns/{bad}/resume", json={"reason": "try again"})
    assert resumed.status_code == 200, resumed.text
    await env.tick()
    assert (await env.get_json(f"/api/v1/campaigns/{bad}"))["status"] == "paused"
    assert len(_errors_about(caplog, bad)) == 2


async def test_on_postgresql_a_faulty_campaign_is_paused_and_the_other_completes(
    tmp_path: Path, postgres_url: str
) -> None:
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        good, bad = await _two_campaigns(env, {"device_timeout_s": 1e308}, {})
        await env.tick()
        progress = await env.get_json(f"/api/v1/campaigns/{bad}/progress")
        assert progress["status"] == "paused" and str(progress["status_reason"]).startswith("internal error in tick")
        nonces = await env.nonces()
        await env.inject(*(remedied(good, v, nonces[v]) for v in (vin(1), vin(2))))
        assert (await env.get_json(f"/api/v1/campaigns/{good}"))["status"] == "completed"


async def test_a_database_failure_in_a_tick_does_not_pause_the_campaign(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage is not the campaign's fault: the next tick does the work."""
    good, _ = await _two_campaigns(env, {}, {})  # two healthy campaigns
    original = CampaignTick._time_out
    failures = [OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))]

    def flaky(self: CampaignTick, *args: Any) -> int:
        if failures:
            raise failures.pop()
        return original(self, *args)

    monkeypatch.setattr(CampaignTick, "_time_out", flaky)
    await env.tick()
    assert not failures  # the failure happened
    assert (await env.get_json(f"/api/v1/campaigns/{good}"))["status"] == "active"
    nonces = await env.nonces()
    await env.inject(*(remedied(good, v, nonces[v]) for v in (vin(1), vin(2))))
    assert (await env.get_json(f"/api/v1/campaigns/{good}"))["status"] == "completed"
