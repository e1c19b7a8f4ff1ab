"""The steps a batch's cars already stored, read per car on ``campaign_events``'s VIN index.

Ingest asks, per batch, which (campaign, VIN, attempt, deferrals, state) steps exist for the batch's
cars, to count a repeated step as a duplicate. ``WHERE vin IN (...)`` is planned from
``campaign_events``'s statistics, and a table that grew from empty during a campaign has none
until it is analyzed (never, on a PostgreSQL without autovacuum, like the bench's): the planner
took 40 VINs for 5% of the table and scanned all of it per batch, O(fleet) per batch (issue 19:
5 ms a batch with 35,000 events at 10,000 cars). On PostgreSQL each VIN is looked up on its own
(a LATERAL subquery that cannot be flattened into a join), one equality on the index whatever the
statistics say; SQLite keeps the plain ``IN`` (its planner uses the index for it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import String, bindparam, func, select, true
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from firmware_bundles.messages import StatusReport
from ota_server.db.models import CampaignEvent

Step = tuple[int, str, int, int, str]  # (campaign, VIN, attempt, deferrals, state): stored once


def step_of(report: StatusReport) -> Step:
    """The step a report records, as :func:`stored_steps` gives the stored ones."""
    return (report.campaign_id, report.vin, report.attempt, report.deferrals, report.state.value)


def stored_steps(session: Session, vins: Sequence[str]) -> Iterable[Step]:
    """Every stored step of ``vins`` (all their campaigns: the caller keeps the ones it wants)."""
    columns = (
        CampaignEvent.campaign_id,
        CampaignEvent.vin,
        CampaignEvent.attempt,
        CampaignEvent.deferrals,
        CampaignEvent.state,
    )
    if session.get_bind().dialect.name != "postgresql":
        rows = session.execute(select(*columns).where(CampaignEvent.vin.in_(vins)))
    else:
        wanted = (
            func.unnest(bindparam("known_step_vins", list(vins), type_=ARRAY(String)))
            .table_valued("vin")
            .render_derived(name="wanted")
        )
        # OFFSET 0 keeps the subquery a per-VIN lookup: without it PostgreSQL may flatten it into a
        # hash join with a scan of every event, the plan this module exists to avoid.
        per_car = select(*columns).where(CampaignEvent.vin == wanted.c.vin).offset(0).lateral("per_car")
        rows = session.execute(select(per_car).select_from(wanted).join(per_car, true()))
    return [(c, v, a, d, s) for c, v, a, d, s in rows]
