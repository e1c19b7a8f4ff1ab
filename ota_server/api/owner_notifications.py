"""The owner-notification log of a recall: owner letters recorded, and the whole log exported (JSON or CSV)."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from fastapi.responses import Response

from ota_server.api.auth import OperatorSession, actor_of, needs_read, trail_of
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.openapi import errors
from ota_server.schemas import OwnerLetterCreate, OwnerLettersRecorded, OwnerNotificationPage, OwnerNotificationPublic
from ota_server.services import owner_letters, owner_notifications

router = APIRouter(prefix="/api/v1/recalls", tags=["owner notifications"])

CSV_COLUMNS = tuple(OwnerNotificationPublic.model_fields)


def _cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula is quoted (CSV injection)."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@router.post("/{recall_id}/owner-letters", status_code=status.HTTP_201_CREATED, responses=errors(404))
def record_owner_letters(
    recall_id: Id, body: OwnerLetterCreate, session: OperatorSession, runtime: RuntimeDep
) -> OwnerLettersRecorded:
    """Record owner letters mailed for this recall (first notification or follow-up), one log row per car."""
    trail_of(session).action.target["letter"] = body.letter
    recorded = owner_letters.record(session, recall_id, body, actor_of(session).name, runtime.clock())
    return OwnerLettersRecorded(recorded=recorded)


@router.get(
    "/{recall_id}/owner-notifications",
    dependencies=[needs_read],
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
def owner_notification_log(
    recall_id: Id,
    session: SessionDep,
    format: Literal["json", "csv"] = "json",
    after: Annotated[int, Query(ge=0, description="The last id of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    vin: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    """Every notice, reminder, withdrawal, consent request and answer, and owner letter of this recall:
    date, channel, kind and the full text (or its sha256), in id order, paged with ``after``."""
    rows = [
        OwnerNotificationPublic.model_validate(r)
        for r in owner_notifications.page(session, recall_id, after=after, limit=limit, vin=vin)
    ]
    next_after = rows[-1].id if len(rows) == limit else None
    if format == "json":
        body = OwnerNotificationPage(rows=rows, next_after=next_after).model_dump_json()
        return Response(body, media_type="application/json")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        data = row.model_dump(mode="json")
        writer.writerow([_cell(data[c]) for c in CSV_COLUMNS])
    headers = {"Content-Disposition": f'attachment; filename="recall-{recall_id}-owner-notifications.csv"'}
    if next_after is not None:
        headers["X-Next-After"] = str(next_after)
    return Response(out.getvalue(), media_type="text/csv", headers=headers)
