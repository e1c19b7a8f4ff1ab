"""Discrepancies: where a car's signed version manifest and the service's record disagree."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator

from ota_server.api.auth import needs_read
from ota_server.api.deps import MAX_ID, Instant, SessionDep
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.schemas import VIN_RULE, VIN_SCHEMA, DiscrepancyKind, DiscrepancyPublic, vin_shape
from ota_server.schemas.listing import Page
from ota_server.services import inventory

router = APIRouter(prefix="/api/v1/discrepancies", tags=["vehicles"], dependencies=[needs_read])


def _vin(value: str | None) -> str | None:
    """A VIN filter of the wrong shape is a 422 saying why, like a VIN in a path."""
    return None if value is None else vin_shape(value)


@router.get("", responses=CSV_RESPONSES)
@exportable("discrepancies.csv")
def list_discrepancies(
    session: SessionDep,
    vin: Annotated[str | None, Query(description=VIN_RULE, json_schema_extra=VIN_SCHEMA), AfterValidator(_vin)] = None,
    kind: DiscrepancyKind | None = None,
    campaign_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    since: Annotated[Instant | None, Query(description="Seen at or after this time (ISO 8601; no zone: UTC)")] = None,
    sort: Annotated[str | None, sort_query(inventory.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[DiscrepancyPublic]:
    """Newest first: tampered or unknown images, unknown versions, remedied cars that run another version."""
    return inventory.discrepancies(
        session,
        vin=vin,
        kind=kind,
        campaign_id=campaign_id,
        since=since,
        sort=sort,
        cursor=cursor,
        limit=limit,
    )
