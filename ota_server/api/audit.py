"""The audit log (admin only): pages, a JSON-lines export and a chain check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from ota_server.api.auth import needs_admin
from ota_server.api.deps import RuntimeDep, SessionDep
from ota_server.schemas import AuditPage, AuditVerification
from ota_server.services import audit

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=[needs_admin])


@router.get("")
def list_entries(
    session: SessionDep,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    return audit.page(session, offset=offset, limit=limit)


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
