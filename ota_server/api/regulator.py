"""Reports for regulators and operators (viewer role): every kind as CSV, JSON or PDF."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import select

from ota_server.api.auth import needs_read
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.openapi import errors
from ota_server.db.models import Recall
from ota_server.regulator import FORMATS, KINDS, Format, Issuer, Kind, build, render
from ota_server.roles import Actor

router = APIRouter(prefix="/api/v1/reports", tags=["reports"], dependencies=[needs_read])


INDEX_RECALLS = 200


@router.get("")
def list_reports(session: SessionDep) -> dict[str, Any]:
    """The report kinds and formats, each recall's reports (the newest 200 recalls) as URLs to
    follow as they are (add ``?format=csv|pdf``), and where the audit log export lives."""
    newest = session.execute(select(Recall.id, Recall.campaign_number).order_by(Recall.id.desc()).limit(INDEX_RECALLS))
    return {
        "kinds": list(KINDS),
        "formats": list(FORMATS),
        "pdf": list(KINDS),  # every kind (the completion report as a one-page summary)
        "recalls": [
            {
                "id": recall_id,
                "campaign_number": number,
                "reports": {kind: f"{router.prefix}/recalls/{recall_id}/{kind}" for kind in KINDS},
            }
            for recall_id, number in newest
        ],
        "audit_export": "/api/v1/audit/export",
    }


@router.get(
    "/recalls/{recall_id}/{kind}",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}, "application/json": {}, "application/pdf": {}}}, **errors(409)},
)
def get_report(
    recall_id: Id,
    kind: Kind,
    session: SessionDep,
    runtime: RuntimeDep,
    actor: Annotated[Actor, needs_read],
    format: Annotated[Format, Query(description="csv, json or pdf")] = "json",
    quarter: Annotated[
        str | None, Query(max_length=8, description="Completion: YYYYQn (default: the current quarter, to date)")
    ] = None,
    week: Annotated[
        str | None, Query(max_length=8, description="VIN status: YYYY-Www (default: the current week, to date)")
    ] = None,
) -> Response:
    """One recall's report: population, completion (per quarter), vin-status (per ISO week),
    notices (owner-notification log) or type-approval (the remedy release's R156 record).
    Each names the manufacturer, the person whose token asked (the submitter) and the date."""
    issuer = Issuer(runtime.settings.manufacturer_name, actor.name)
    report = build(session, kind, recall_id, runtime.clock(), issuer, quarter=quarter, week=week)
    body, media_type = render(report, format)
    filename = f"{report.meta['recall_number']}-{kind}.{format}".replace("/", "_").replace('"', "")
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
