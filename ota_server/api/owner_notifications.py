"""The owner-notification log of a recall: owner letters recorded, and the whole log exported (JSON or CSV)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import Response
from sqlalchemy.orm import Session

from ota_server.api.auth import OperatorSession, actor_of, needs_read, trail_of
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.listing import CSV_RESPONSES, CsvFormat, Cursor, Limit, csv_stream, sort_query
from ota_server.api.openapi import errors
from ota_server.schemas import OwnerLetterCreate, OwnerLettersRecorded, OwnerNotificationPublic, Text
from ota_server.schemas.listing import Page
from ota_server.services import owner_letters, owner_notifications

router = APIRouter(prefix="/api/v1/recalls", tags=["owner notifications"])

CSV_COLUMNS = tuple(OwnerNotificationPublic.model_fields)


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
    response_model=Page[OwnerNotificationPublic],
    responses=CSV_RESPONSES,
)
def owner_notification_log(
    recall_id: Id,
    session: SessionDep,
    runtime: RuntimeDep,
    format: CsvFormat = "json",
    vin: Annotated[str | None, Query(max_length=32, description="Only this car")] = None,
    kind: Annotated[
        Text | None, Query(min_length=1, max_length=24, description="notice, reminder, withdrawal, consent_*, letter")
    ] = None,
    sort: Annotated[str | None, sort_query(owner_notifications.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[OwnerNotificationPublic] | Response:
    """Every notice, reminder, withdrawal, consent request and answer, and owner letter of this recall:
    date, channel, kind and the full text (or its sha256), in id order by default; ``format=csv``: every row."""
    if format == "json":
        rows, next_cursor = owner_notifications.page(
            session, recall_id, vin=vin, kind=kind, sort=sort, cursor=cursor, limit=limit
        )
        return Page[OwnerNotificationPublic](
            items=[OwnerNotificationPublic.model_validate(r) for r in rows], next_cursor=next_cursor
        )
    owner_notifications.LISTING.order(sort)  # a bad sort is a 422 before the stream starts

    def cells(s: Session) -> Iterator[list[object]]:
        for row in owner_notifications.every(s, recall_id, vin=vin, kind=kind, sort=sort):
            data = OwnerNotificationPublic.model_validate(row).model_dump(mode="json")
            yield [data[c] for c in CSV_COLUMNS]

    return csv_stream(runtime.sessions, CSV_COLUMNS, cells, f"recall-{recall_id}-owner-notifications.csv")
