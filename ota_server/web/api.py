"""The dashboard's JSON APIs: campaign dashboard and live stream, VIN timeline, public look-up.

Everything under ``/api/v1`` but ``/api/v1/public/*`` needs a token with the read
permission (any role), as a bearer header or, on these GET routes, the login cookie
(see ``ota_server.api.auth``). The public look-up needs none and is rate-limited per
client address instead.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator

from ota_server.api.auth import Viewer, needs_read
from ota_server.api.deps import Id, RuntimeDep, SessionDep, VinPath
from ota_server.runtime import Runtime
from ota_server.schemas import VIN_RULE, VIN_SCHEMA, vin_shape
from ota_server.web import dashboard as dashboards
from ota_server.web import i18n
from ota_server.web import lookup as lookups
from ota_server.web import timeline as timelines
from ota_server.web.owner_view import OwnerSettings
from ota_server.web.schemas import CampaignSummary, Dashboard, PublicLookup, VehicleTimeline, WhoAmI
from ota_server.web.sse import EventStreams, snapshot_events

router = APIRouter(prefix="/api/v1", tags=["dashboard"])
public = APIRouter(prefix="/api/v1/public", tags=["public"])

STREAM_INTERVAL_S = 1.0
STREAM_HEARTBEAT_S = 15.0
STREAM_LIFETIME_S = 300.0


@router.get("/whoami")
def whoami(actor: Viewer) -> WhoAmI:
    """The person and role behind the token (or login cookie) of this request."""
    return WhoAmI(name=actor.name, role=actor.role.value)


@router.get("/dashboard/campaigns", dependencies=[needs_read])
def campaign_summaries(session: SessionDep, runtime: RuntimeDep) -> list[CampaignSummary]:
    """Every campaign, newest first, with remedied / in progress / error counts, and a scheduled one's start."""
    return dashboards.summaries(session, runtime.clock())


@router.get("/campaigns/{campaign_id}/dashboard", dependencies=[needs_read])
def campaign_dashboard(campaign_id: Id, session: SessionDep, runtime: RuntimeDep) -> Dashboard:
    """Funnel, cars per state, remedied and failures over time, waves with their gates, and failures
    by reason x model x ECU hardware id x software version (with each value's share of the campaign)."""
    return dashboards.dashboard(session, campaign_id, runtime.clock())


def _snapshot_json(runtime: Runtime, campaign_id: int) -> str:
    with runtime.sessions() as session:
        return dashboards.dashboard(session, campaign_id, runtime.clock()).model_dump_json()


def _fingerprint(runtime: Runtime, campaign_id: int) -> object:
    with runtime.sessions() as session:
        return dashboards.fingerprint(session, campaign_id)


@router.get(
    "/campaigns/{campaign_id}/stream",
    dependencies=[needs_read],
    response_class=StreamingResponse,
    # An endless text/event-stream: described in docs/dashboard.md rather than to schema tools.
    include_in_schema=False,
)
async def campaign_stream(
    campaign_id: Id,
    request: Request,
    runtime: RuntimeDep,
    max_events: Annotated[int | None, Query(ge=1, le=10_000, description="Close after this many snapshots")] = None,
) -> StreamingResponse:
    """Server-sent events: ``event: snapshot`` with the dashboard JSON at once and then within about
    a second of any change; a ``: heartbeat`` comment every 15 s of quiet; the response ends after
    5 minutes (EventSource reconnects, re-checking the token)."""
    await asyncio.to_thread(_fingerprint, runtime, campaign_id)  # 404 before the stream starts
    streams: EventStreams = request.app.state.event_streams
    events = snapshot_events(
        lambda: asyncio.to_thread(_fingerprint, runtime, campaign_id),
        lambda: asyncio.to_thread(_snapshot_json, runtime, campaign_id),
        request.is_disconnected,
        interval=STREAM_INTERVAL_S,
        heartbeat=STREAM_HEARTBEAT_S,
        lifetime=STREAM_LIFETIME_S,
        max_events=max_events,
        sleep=streams.sleep,
        closing=streams.closing,
    )
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


@router.get("/vehicles/{vin}/timeline", dependencies=[needs_read])
def vehicle_timeline(vin: VinPath, session: SessionDep, runtime: RuntimeDep) -> VehicleTimeline:
    """Customer care: every notice, report, deferral, failure (with its reason), retry and operator
    record of this car across campaigns, oldest first, and the next step in plain words."""
    return timelines.timeline(session, vin, runtime.clock())


def get_lookup_limiter(request: Request) -> lookups.AddressBuckets:
    limiter: lookups.AddressBuckets = request.app.state.lookup_limiter
    return limiter


@public.get("/recalls", responses={422: {"description": "Not a valid VIN"}, 429: {"description": "Too many"}})
def public_recalls(
    request: Request,
    session: SessionDep,
    runtime: RuntimeDep,
    vin: Annotated[str, Query(description=VIN_RULE, json_schema_extra=VIN_SCHEMA), AfterValidator(vin_shape)],
    lang: Annotated[str | None, Query(max_length=8, description="en or it (default: Accept-Language)")] = None,
) -> PublicLookup:
    """No token: the recalls affecting this VIN and whether each is fixed, as an owner may see them.

    Rate-limited per client address (``OTA_LOOKUP_RATE_PER_MIN``, ``OTA_LOOKUP_BURST``).
    """
    get_lookup_limiter(request).take(request.client.host if request.client else None)
    chosen = i18n.choose(request.headers.get("accept-language"), lang)
    return lookups.lookup(session, vin, runtime.clock(), chosen, OwnerSettings.of(runtime.settings))
