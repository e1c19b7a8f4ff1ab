"""The audit log (admin only): pages, a JSON-lines export and a chain check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from ota_server.api.auth import needs_admin
from ota_server.api.deps import Instant, RuntimeDep, SessionDep
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.schemas import AuditEntryPublic, AuditVerification, Text
from ota_server.schemas.listing import Page
from ota_server.services import audit

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=[needs_admin])


@router.get("", responses=CSV_RESPONSES)
@exportable("audit.csv")
def list_entries(
    session: SessionDep,
    actor: Annotated[Text | None, Query(min_length=1, max_length=64, description="Who acted (token name)")] = None,
    route: Annotated[
        Text | None, Query(min_length=1, max_length=255, description="Routes starting with this, e.g. /api/v1/recalls")
    ] = None,
    since: Annotated[Instant | None, Query(description="At or after (ISO 8601; no zone: UTC)")] = None,
    until: Annotated[Instant | None, Query(description="Before (ISO 8601; no zone: UTC)")] = None,
    sort: Annotated[str | None, sort_query(audit.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[AuditEntryPublic]:
    """The audit log, oldest first by default, a page at a time."""
    spec = audit.AuditFilter(actor=actor, route=route, since=since, until=until)
    return audit.page(session, spec, sort, cursor, limit)


@router.get("/export", response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}})
def export(runtime: RuntimeDep) -> StreamingResponse:
    """Every entry, oldest first, one JSON object per line (with its hash, to verify elsewhere)."""

    def lines() -> Iterator[str]:
        with runtime.sessions() as session:
            yield from audit.export_lines(session)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/verify")
def verify(session: SessionDep) -> AuditVerification:
    """Recompute the hash chain; names the first entry that was altered, removed or reordered."""
    return audit.verify(session)
