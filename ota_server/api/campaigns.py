"""Campaign views, progress and the operators' controls (pause, resume, cancel, rollback, retry, per-VIN records)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from ota_server.api.auth import OperatorSession, actor_of, needs_read, trail_of
from ota_server.api.deps import MAX_ID, Id, RuntimeDep, SessionDep, VinPath
from ota_server.api.listing import CSV_RESPONSES, CsvFormat, Cursor, Limit, csv_stream, exportable, sort_query
from ota_server.api.openapi import errors
from ota_server.domain.states import CampaignKind, CampaignStatus, StateWord
from ota_server.schemas import (
    CampaignControl,
    CampaignPublic,
    ControlResult,
    NoticeLogEntry,
    OutcomeCreate,
    Progress,
    RollbackStart,
    Text,
    VinOutcome,
)
from ota_server.schemas.listing import CampaignVehiclePage, CampaignVehicleRow, Page
from ota_server.services import campaign_vehicles, campaigns, progress
from ota_server.services import notice_log as notice_logs

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])


@router.get("", dependencies=[needs_read], responses=CSV_RESPONSES)
@exportable("campaigns.csv")
def list_campaigns(
    session: SessionDep,
    runtime: RuntimeDep,
    recall_id: Annotated[int | None, Query(ge=1, le=MAX_ID, description="The recall's campaigns")] = None,
    status: CampaignStatus | None = None,
    kind: Annotated[CampaignKind | None, Query(description="remedy or rollback")] = None,
    sort: Annotated[str | None, sort_query(campaigns.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[CampaignPublic]:
    """Campaigns, remedy and rollback, oldest first by default, a page at a time."""
    return campaigns.page(session, recall_id, status, kind, sort, cursor, limit, runtime.clock())


@router.get("/{campaign_id}", dependencies=[needs_read])
def get_campaign(campaign_id: Id, session: SessionDep, runtime: RuntimeDep) -> CampaignPublic:
    """The campaign: population (frozen count and current), status and the open wave."""
    return campaigns.get(session, campaign_id, runtime.clock())


@router.get("/{campaign_id}/progress", dependencies=[needs_read])
def get_progress(
    campaign_id: Id,
    session: SessionDep,
    runtime: RuntimeDep,
    ecus: Annotated[
        bool, Query(description="Include the per-ECU breakdown (false: `ecus` is empty, the answer much cheaper)")
    ] = True,
) -> Progress:
    """Counts per state (always adding up to the population), per wave with each gate's verdict,
    failures by reason, unreachable cars by reason, retries waiting, and per ECU unless ``ecus=false``."""
    return progress.progress(session, campaign_id, runtime.clock(), ecus=ecus)


@router.post("/{campaign_id}/pause", responses=errors(409))
async def pause_campaign(
    campaign_id: Id, body: CampaignControl, session: OperatorSession, runtime: RuntimeDep
) -> CampaignPublic:
    """Stop notifying cars (and retrying). Cars already working carry on and report."""
    return await runtime.rollout.pause(session, campaign_id, body.reason, actor_of(session).name)


@router.post("/{campaign_id}/resume", responses=errors(409))
async def resume_campaign(
    campaign_id: Id, body: CampaignControl, session: OperatorSession, runtime: RuntimeDep
) -> CampaignPublic:
    """Notify again after a pause (an operator's or the error threshold's).

    The open wave's errors so far count as seen: the threshold trips again only on new ones.
    """
    return await runtime.rollout.resume(session, campaign_id, body.reason, actor_of(session).name)


@router.post("/{campaign_id}/cancel", responses=errors(409))
async def cancel_campaign(
    campaign_id: Id, body: CampaignControl, session: OperatorSession, runtime: RuntimeDep
) -> ControlResult:
    """Cancel: every car that has not started is withdrawn (a retained withdrawal replaces its
    notice and its Director assignment is emptied); cars installing finish or roll back cleanly."""
    campaign, withdrawn = await runtime.rollout.cancel(session, campaign_id, body.reason, actor_of(session).name)
    return ControlResult(campaign=campaign, vehicles=withdrawn)


@router.post("/{campaign_id}/rollback", status_code=201, responses=errors(409))
async def roll_back_campaign(
    campaign_id: Id, body: RollbackStart, session: OperatorSession, runtime: RuntimeDep
) -> CampaignPublic:
    """Start the rollback of a paused campaign by hand: the recall's rollback release to the remedied
    cars of the open wave or of every wave (``reach``); returns the rollback campaign (its
    ``parent_campaign_id`` is this campaign), whose cars are notified at once."""
    trail_of(session).action.target["reach"] = body.reach or "plan"
    return await runtime.rollout.roll_back(session, campaign_id, body, actor_of(session).name)


@router.post("/{campaign_id}/retry-failed", responses=errors(409))
async def retry_failed(campaign_id: Id, session: OperatorSession, runtime: RuntimeDep) -> ControlResult:
    """Give every failed, rolled-back or timed-out car a new notice (new nonce) now, within the plan's
    waves, rate and windows; the car starts a new attempt."""
    campaign, count = await runtime.rollout.retry_failed(session, campaign_id)
    return ControlResult(campaign=campaign, vehicles=count)


@router.post("/{campaign_id}/vehicles/{vin}/outcome", responses=errors(409))
async def record_outcome(
    campaign_id: Id, vin: VinPath, body: OutcomeCreate, session: OperatorSession, runtime: RuntimeDep
) -> VinOutcome:
    """Record, with evidence, that a car was remedied at a dealer, inspected and found not to need
    the remedy, or is unreachable (exported, stolen, scrapped, other)."""
    trail_of(session).action.target["outcome"] = body.outcome
    return await runtime.rollout.record_outcome(session, campaign_id, vin, body, actor_of(session).name)


@router.get("/{campaign_id}/notices", dependencies=[needs_read], responses={**CSV_RESPONSES, **errors(404)})
@exportable("campaign-{campaign_id}-notices.csv")
def notice_log(
    campaign_id: Id,
    session: SessionDep,
    vin: Annotated[Text | None, Query(max_length=17, description="Only this car")] = None,
    kind: Annotated[notice_logs.NoticeKind | None, Query(description="Notices (campaign) or withdrawals")] = None,
    sort: Annotated[str | None, sort_query(notice_logs.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[NoticeLogEntry]:
    """The owner-notification log: every notice and withdrawal the broker accepted, with its content."""
    return notice_logs.page(session, campaign_id, vin, kind, sort, cursor, limit)


VEHICLE_COLUMNS = (
    "vin", "model", "model_year", "state", "wave", "reason", "reason_text", "detail", "attempts", "retries",
    "next_try_at", "next_try_basis", "updated_at", "last_seen", "ecus", "link",
)  # fmt: skip


def _vehicle_cells(row: CampaignVehicleRow) -> list[object]:
    data = row.model_dump(mode="json")
    data["ecus"] = "; ".join(
        f"{e.serial} ({e.hardware_id}) {e.installed_version or '-'} [{e.source}]" for e in row.ecus
    )
    return [data[c] for c in VEHICLE_COLUMNS]


@router.get(
    "/{campaign_id}/vehicles",
    dependencies=[needs_read],
    response_model=CampaignVehiclePage,
    responses={**CSV_RESPONSES, **errors(404)},
)
def campaign_vehicles_list(
    campaign_id: Id,
    session: SessionDep,
    runtime: RuntimeDep,
    state: Annotated[
        list[StateWord] | None,
        Query(
            max_length=20,
            description="Any of these states (repeat); errors: failed, rolled_back and timed_out (what the "
            "progress summary counts as failed)",
        ),
    ] = None,
    reason: Annotated[
        Text | None, Query(min_length=1, max_length=64, description="A failure, unreachable or timeout reason code")
    ] = None,
    wave: Annotated[int | None, Query(ge=1, le=10_000, description="The wave, numbered from 1")] = None,
    ecu: Annotated[
        Text | None, Query(min_length=1, max_length=64, description="An affected ECU's serial or hardware id")
    ] = None,
    vin: Annotated[
        str | None, Query(pattern=r"^[A-HJ-NPR-Za-hj-npr-z0-9]{1,17}$", description="VINs starting with this")
    ] = None,
    sort: Annotated[str | None, sort_query(campaign_vehicles.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
    format: CsvFormat = "json",
) -> CampaignVehiclePage | Response:
    """Every car of the campaign, filtered: its state, wave, reason in plain words, attempts, when a deferred
    or retrying car will be tried again, and what each affected ECU runs. ``format=csv``: every matching row."""
    spec = campaign_vehicles.CarFilter(states=state or (), reason=reason, wave=wave, ecu=ecu, vin_prefix=vin)
    if format == "json":
        return campaign_vehicles.page(session, campaign_id, spec, sort, cursor, limit)
    campaign_vehicles.check(session, campaign_id, sort)
    return csv_stream(
        runtime.sessions,
        VEHICLE_COLUMNS,
        lambda s: map(_vehicle_cells, campaign_vehicles.every(s, campaign_id, spec, sort)),
        f"campaign-{campaign_id}-vehicles.csv",
    )
