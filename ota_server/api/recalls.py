"""Recalls and their launch into campaigns (a safety recall needs a second person's approval)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from ota_server.api.auth import ApproverSession, OperatorSession, actor_of, needs_read, trail_of
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.api.openapi import errors
from ota_server.schemas import CampaignPublic, LaunchRequestPublic, RecallCreate, RecallPublic, Text
from ota_server.schemas.listing import Page, RecallStatus
from ota_server.services import approvals, campaigns, owner_notices, recalls

router = APIRouter(prefix="/api/v1/recalls", tags=["recalls"])

_AWAITING: dict[int | str, dict[str, Any]] = {
    status.HTTP_202_ACCEPTED: {
        "model": LaunchRequestPublic,
        "description": "A safety recall: the launch is requested and waits for a different person to approve it",
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(409))
def create_recall(body: RecallCreate, session: OperatorSession, runtime: RuntimeDep) -> RecallPublic:
    trail_of(session).action.target["campaign_number"] = body.campaign_number
    settings = runtime.settings
    contact = owner_notices.default_contact(
        settings.manufacturer_contact_name,
        settings.manufacturer_contact_role,
        settings.manufacturer_contact_phone,
        settings.manufacturer_contact_email,
    )
    return recalls.create(session, body, runtime.clock(), contact)


@router.get("", dependencies=[needs_read], responses=CSV_RESPONSES)
@exportable("recalls.csv")
def list_recalls(
    session: SessionDep,
    status: Annotated[
        RecallStatus | None, Query(description="Not launched, awaiting approval, or the campaign's")
    ] = None,
    q: Annotated[
        Text | None,
        Query(min_length=1, max_length=64, description="Text in the campaign number, maker's number or title"),
    ] = None,
    sort: Annotated[str | None, sort_query(recalls.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[RecallPublic]:
    """Recalls, oldest first by default, a page at a time."""
    return recalls.page(session, status, q, sort, cursor, limit)


@router.get("/{recall_id}", dependencies=[needs_read])
def get_recall(recall_id: Id, session: SessionDep) -> RecallPublic:
    return recalls.get(session, recall_id)


@router.post("/{recall_id}/launch", status_code=status.HTTP_201_CREATED, responses={**_AWAITING, **errors(409)})
async def launch_recall(
    recall_id: Id, session: OperatorSession, runtime: RuntimeDep, response: Response
) -> CampaignPublic | LaunchRequestPublic:
    """Launch a non-safety recall at once (201); for a safety recall, record the request (202).

    Launching freezes the population into the rollout plan's waves; the campaign engine then
    notifies the first cars the plan allows (signing their Director metadata) at once.
    A request is refused as the launch would be: 422 if no car matches, 409 if the release
    is not published or the recall is launched already (naming its campaign). Asking again
    while a request waits, even at the same moment, answers the one request stored.
    """

    def launch() -> CampaignPublic | LaunchRequestPublic:
        if approvals.needs_approval(session, recall_id):
            trail_of(session).action.status = status.HTTP_202_ACCEPTED
            return approvals.request_launch(session, recall_id, actor_of(session), runtime.clock())
        return campaigns.launch(session, recall_id, now=runtime.clock())

    result = await runtime.rollout.launch(launch)
    if isinstance(result, LaunchRequestPublic):
        response.status_code = status.HTTP_202_ACCEPTED
    return result


@router.post("/{recall_id}/approve", status_code=status.HTTP_201_CREATED, responses=errors(409))
async def approve_launch(recall_id: Id, session: ApproverSession, runtime: RuntimeDep) -> CampaignPublic:
    """Approve a requested safety recall launch (not by its requester) and launch it.

    Freezes the population into waves; the scheduler notifies the first cars the plan
    allows at once (signing their Director metadata) and publishes in the background.
    A launched recall, however it was launched, is 409 naming its campaign.
    """

    def approve() -> CampaignPublic:
        approvals.stage_approval(session, recall_id, actor_of(session), runtime.clock())
        return campaigns.launch(session, recall_id, now=runtime.clock())

    return await runtime.rollout.launch(approve)
