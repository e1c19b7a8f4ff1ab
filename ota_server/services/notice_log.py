"""A campaign's notice log (every notice and withdrawal the broker accepted), on the one list contract."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.vin import normalize_vin
from ota_server.db.models import Campaign, NoticeLog
from ota_server.errors import NotFound
from ota_server.schemas import NoticeLogEntry
from ota_server.schemas.listing import Page
from ota_server.services import listing

NoticeKind = Literal["campaign", "withdrawal"]

LISTING = listing.by_id("notices", NoticeLog.id, published_at=listing.column(NoticeLog.published_at, datetime))


def page(
    session: Session,
    campaign_id: int,
    vin: str | None,
    kind: NoticeKind | None,
    sort: str | None,
    cursor: str | None,
    limit: int,
) -> Page[NoticeLogEntry]:
    """The campaign's notices and withdrawals (optionally one car's, or one kind), oldest first by default."""
    if session.get(Campaign, campaign_id) is None:
        raise NotFound(f"no campaign {campaign_id}")
    query = select(NoticeLog).where(NoticeLog.campaign_id == campaign_id)
    if vin:
        query = query.where(NoticeLog.vin == normalize_vin(vin))
    if kind is not None:
        query = query.where(NoticeLog.kind == kind)
    rows, next_cursor = listing.page(session, query, LISTING, sort, cursor, limit)
    return Page[NoticeLogEntry](items=[NoticeLogEntry.model_validate(r) for r in rows], next_cursor=next_cursor)
