"""The notifier's next cars: first notices and due retries, in wave and VIN order, a page at a time.

Found at 10,000 cars (issue 19): one query with an OR of the two kinds made PostgreSQL read and
sort the whole campaign for every page of every tick (13% of its time per car). Now the waiting
cars come from the head of a partial index and the retries from the state index, merged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from ota_server.db.models import Campaign, CampaignVehicle
from ota_server.rollout.notifying import candidate_page
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import launched, vin

FLEET = 3000  # enough for the planner to choose between reading all and reading the head


@pytest.fixture
async def postgres_env(postgres_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        yield env


async def test_first_notices_and_due_retries_interleave_in_wave_and_vin_order_page_by_page(either_env: Env) -> None:
    env = either_env
    vins = [vin(n) for n in range(1, 13)]
    cid = (await launched(env.client, vins))["id"]
    await env.tick()  # the launch's own notifying done: from here the test sets every car's state
    now = env.clock.now
    with env.runtime.sessions() as session:
        cars = CampaignVehicle.vin
        session.execute(update(CampaignVehicle).values(state="pending", notified_at=None, next_retry_at=None))
        session.execute(update(CampaignVehicle).where(cars.in_(vins[:4])).values(notified_at=now, state="notified"))
        session.execute(  # failed, retry due; failed, retry later; timed out, retry due
            update(CampaignVehicle)
            .where(cars.in_([vins[1], vins[7]]))
            .values(state="failed", next_retry_at=now - timedelta(seconds=1), notified_at=now)
        )
        session.execute(
            update(CampaignVehicle)
            .where(cars == vins[9])
            .values(state="failed", next_retry_at=now + timedelta(hours=1), notified_at=now)
        )
        session.execute(
            update(CampaignVehicle)
            .where(cars == vins[10])
            .values(state="timed_out", next_retry_at=now - timedelta(seconds=5), notified_at=now)
        )
        session.commit()
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        expected = sorted(v for n, v in enumerate(vins) if n in (1, 4, 5, 6, 7, 8, 10, 11))  # one wave: by VIN
        pages = [session.execute(candidate_page(campaign, now, offset, 3)).all() for offset in (0, 3, 6, 9)]
    assert [row[0] for page in pages for row in page] == expected
    assert [len(page) for page in pages] == [3, 3, 2, 0]
    states = {row[0]: row[1] for page in pages for row in page}
    assert states[vins[1]] == "failed" and states[vins[10]] == "timed_out" and states[vins[4]] == "pending"


@pytest.mark.services
async def test_a_page_of_a_large_campaign_is_read_from_the_waiting_index_not_the_whole_campaign(
    postgres_env: Env,
) -> None:
    env = postgres_env
    cid = (await launched(env.client, [vin(1), vin(2)]))["id"]
    engine = env.runtime.engine
    with engine.begin() as conn:  # a launch's worth of waiting cars, analyzed as the launch does
        conn.execute(
            text(
                "INSERT INTO campaign_vehicles (campaign_id, vin, nonce, state, attempt, updated_at, wave) "
                "SELECT :cid, 'ZZZ' || lpad(g::text, 14, '0'), md5(g::text), 'pending', 0, now(), 0 "
                "FROM generate_series(1, :n) g"
            ),
            {"cid": cid, "n": FLEET},
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE campaign_vehicles"))
    with env.runtime.sessions() as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        query = candidate_page(campaign, env.clock.now, 0, 1000)
        compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(row[0] for row in session.execute(text(f"EXPLAIN {compiled}")))
        assert "ix_campaign_vehicles_waiting" in plan, plan
        assert "Seq Scan on campaign_vehicles" not in plan, plan
        assert session.execute(query).all() == []  # the synthetic cars have no vehicle row, the two real ones notified
