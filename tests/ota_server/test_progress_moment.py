"""Campaign progress reads ``done`` and the counts as of one moment, or at least never a done with cars in flight.

A car's last report landing between progress's reads gave ``done`` with a stale count
(ota-sim saw done with 18 of 20 remedied, 0 failed, and exited 1 although all 20 were).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, update

from ota_server.db.models import CampaignVehicle
from ota_server.domain.states import IN_FLIGHT
from ota_server.services.progress import progress
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import provision, recall_body, upload, vehicle, vin


async def test_a_report_landing_mid_read_never_gives_done_with_a_car_in_flight(env: Env) -> None:
    car = vin(1)
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(car)]})).status_code < 300
    await provision(env.client, [car])
    release = (await upload(env.client)).json()["id"]
    recall = await env.client.post(
        "/api/v1/recalls", json={**recall_body(release), "rollout": {"waves": [{"percent": 100}]}}
    )
    launched = await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")
    cid = launched.json()["id"]
    await env.runtime.dispatcher.idle()

    sessions = env.runtime.sessions
    landed: list[str] = []
    reads: list[str] = []
    with sessions() as reader:

        @event.listens_for(reader, "do_orm_execute")
        def report_lands(state: Any) -> None:  # the car's remedied report, stored by the ingest meanwhile
            text = str(state.statement)
            if "FROM campaign_vehicles" not in text:
                return
            reads.append(text)
            if landed or len(reads) != 2:  # between the first two reads of the cars, whichever they are
                return
            landed.append(text)
            with sessions.begin() as writer:
                writer.execute(
                    update(CampaignVehicle).where(CampaignVehicle.campaign_id == cid).values(state="remedied")
                )

        shown = progress(reader, cid, env.clock())

    assert landed  # the report did land between the reads
    in_flight = sum(shown.counts[s.value] for s in IN_FLIGHT)
    assert not (shown.done and in_flight), (shown.done, shown.counts)


async def test_the_counts_done_notices_and_retries_come_from_one_read_of_the_cars(env: Env) -> None:
    """A dashboard polls progress for the whole rollout: one pass over the campaign's cars gives the
    counts, which waves can still change, the notices published and the retries waiting (issue 19);
    only the two breakdowns by reason (failed, unreachable: by the campaign-state index) read them again."""
    cars = [vin(i) for i in range(1, 4)]
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(c) for c in cars]})).is_success
    await provision(env.client, cars)
    release = (await upload(env.client)).json()["id"]
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release))
    cid = (await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")).json()["id"]
    await env.runtime.dispatcher.idle()
    reads: list[str] = []
    with env.runtime.sessions() as reader:

        @event.listens_for(reader, "do_orm_execute")
        def seen(state: Any) -> None:
            if "FROM campaign_vehicles" in (text := str(state.statement)):
                reads.append(text)

        shown = progress(reader, cid, env.clock(), ecus=False)
    assert sum(shown.counts.values()) == 3 and shown.notices_published == 3 and not shown.done
    assert len(reads) == 3, reads  # the one pass, then failures and unreachable cars by reason
    assert shown.ecus == []
