"""The owner-notification log: every notice, reminder, withdrawal, consent request or answer and
owner letter, with its date, channel and the text the owner was shown (or only its sha256).

:func:`record` is the one writer; the MQTT publisher, the owner page, the car's consent
reports and the owner-letter API all call it. It adds rows to the caller's session and never
commits: the caller's transaction decides. :func:`page` reads one recall's log in id order
(paged by ``after``), for the API's JSON and CSV exports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from firmware_bundles.messages import CampaignNotice, CampaignWithdrawal
from firmware_bundles.vin import normalize_vin
from ota_server.db.copy_rows import insert_rows
from ota_server.db.models import Campaign, OwnerNotification
from ota_server.db.one_of import one_of
from ota_server.errors import InvalidInput, NotFound
from ota_server.services import listing, owner_notices

KINDS = frozenset({"notice", "reminder", "withdrawal", "consent_request", "consent_answer", "letter"})
CHANNELS = frozenset({"mqtt", "letter", "email", "owner_page", "head_unit", "cli", "phone"})
TEXT_LIMIT = 20_000
WITHDRAWN_TEXT = "This update was withdrawn: your vehicle will not install it."


@dataclass(frozen=True)
class Entry:
    """One thing an owner was told, before it is stored."""

    vin: str
    kind: str
    channel: str
    text: str
    at: datetime
    detail: str = ""
    keep_text: bool = True  # False: keep only the sha256 (e.g. a letter's text held elsewhere)


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record(
    session: Session,
    *,
    vin: str,
    campaign_id: int | None,
    kind: str,
    channel: str,
    text: str,
    at: datetime,
    recall_id: int | None = None,
    detail: str = "",
    keep_text: bool = True,
    recorded_by: str = "",
) -> None:
    """Log one thing told to one car's owner (added to ``session``; the caller commits).

    ``campaign_id`` names the campaign when there is one; otherwise ``recall_id`` must.
    """
    record_many(
        session,
        [Entry(vin, kind, channel, text, at, detail, keep_text)],
        campaign_id=campaign_id,
        recall_id=recall_id,
        recorded_by=recorded_by,
        now=at,
    )


def record_many(
    session: Session,
    entries: Sequence[Entry],
    *,
    campaign_id: int | None,
    recall_id: int | None = None,
    recorded_by: str = "",
    now: datetime,
) -> int:
    """Log several entries of one campaign (or recall) in one insert; returns how many."""
    if not entries:
        return 0
    if campaign_id is not None:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            raise NotFound(f"no campaign {campaign_id}")
        if recall_id is not None and recall_id != campaign.recall_id:
            raise InvalidInput(f"campaign {campaign_id} is not of recall {recall_id}")
        recall_id = campaign.recall_id
    if recall_id is None:
        raise InvalidInput("an owner notification names its campaign or its recall")
    rows = [_row(e, recall_id, campaign_id, recorded_by, now) for e in entries]
    insert_rows(session, OwnerNotification, rows)
    return len(rows)


def record_published(session: Session, published: Sequence[CampaignNotice | CampaignWithdrawal], now: datetime) -> None:
    """Log the MQTT notices and withdrawals the broker accepted: the text the car shows its owner.

    A campaign's second notice to the same car (a retry, a re-notification) is a reminder.
    """
    by_campaign: dict[int, list[CampaignNotice | CampaignWithdrawal]] = {}
    for message in published:
        by_campaign.setdefault(message.campaign_id, []).append(message)
    for campaign_id, messages in by_campaign.items():
        told = set(
            session.scalars(
                select(OwnerNotification.vin).where(
                    OwnerNotification.campaign_id == campaign_id,
                    OwnerNotification.kind.in_(("notice", "reminder")),
                    one_of(OwnerNotification.vin, {m.vin for m in messages}),
                )
            )
        )
        entries = []
        for m in messages:
            if isinstance(m, CampaignWithdrawal):
                entries.append(Entry(m.vin, "withdrawal", "mqtt", WITHDRAWN_TEXT, now))
                continue
            body = owner_notices.text_of(m.owner_notice, m.title) if m.owner_notice else m.title
            if m.owner_url:
                body += f"\n{m.owner_url}"
            entries.append(Entry(m.vin, "reminder" if m.vin in told else "notice", "mqtt", body, now))
            told.add(m.vin)
        record_many(session, entries, campaign_id=campaign_id, now=now)


def _row(e: Entry, recall_id: int, campaign_id: int | None, recorded_by: str, now: datetime) -> dict[str, object]:
    if e.kind not in KINDS:
        raise InvalidInput(f"unknown owner-notification kind {e.kind!r} (one of {', '.join(sorted(KINDS))})")
    if e.channel not in CHANNELS:
        raise InvalidInput(f"unknown owner-notification channel {e.channel!r} (one of {', '.join(sorted(CHANNELS))})")
    if len(e.text) > TEXT_LIMIT:
        raise InvalidInput(f"an owner notification's text is at most {TEXT_LIMIT} characters")
    return {
        "recall_id": recall_id,
        "campaign_id": campaign_id,
        "vin": normalize_vin(e.vin),
        "kind": e.kind,
        "channel": e.channel,
        "text": e.text if e.keep_text else "",
        "text_sha256": sha256_of(e.text),
        "detail": e.detail[:200],
        "at": e.at,
        "recorded_at": now,
        "recorded_by": recorded_by,
    }


LISTING = listing.by_id("owner-notifications", OwnerNotification.id, at=listing.column(OwnerNotification.at, datetime))


def _logged(recall_id: int, vin: str | None, kind: str | None) -> Select[OwnerNotification]:
    query = select(OwnerNotification).where(OwnerNotification.recall_id == recall_id)
    if vin:
        query = query.where(OwnerNotification.vin == normalize_vin(vin))
    if kind:
        query = query.where(OwnerNotification.kind == kind)
    return query


def page(
    session: Session,
    recall_id: int,
    *,
    vin: str | None = None,
    kind: str | None = None,
    sort: str | None = None,
    cursor: str | None = None,
    limit: int = 500,
) -> tuple[list[OwnerNotification], str | None]:
    """One page of a recall's log (id order by default) and the next page's cursor."""
    return listing.page(session, _logged(recall_id, vin, kind), LISTING, sort, cursor, limit)


def every(
    session: Session, recall_id: int, *, vin: str | None, kind: str | None, sort: str | None
) -> Iterator[OwnerNotification]:
    """Every row of a recall's log under the same filters (an export), a keyset page at a time."""
    for rows in listing.every(session, _logged(recall_id, vin, kind), LISTING, sort):
        yield from rows


def of_vin(session: Session, vin: str) -> Iterable[OwnerNotification]:
    """Everything logged for one car, oldest first (the VIN's timeline shows it)."""
    return session.scalars(
        select(OwnerNotification)
        .where(OwnerNotification.vin == normalize_vin(vin))
        .order_by(OwnerNotification.at, OwnerNotification.id)
    )
