"""Launching a recall: freeze its population into waves; notices and their bookkeeping.

Launch writes the campaign and one row per car in one transaction, each car with its
nonce and its wave; nothing is signed or sent yet. The campaign
engine (:mod:`ota_server.rollout.coordinator`) then releases cars wave by wave: it signs each
car's Director metadata and hands the notices to the dispatcher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bundles.messages import CampaignNotice, CampaignWithdrawal, OwnerNotice, Preconditions
from ota_server.db.copy_rows import insert_rows
from ota_server.db.models import Campaign, CampaignEcu, CampaignVehicle, NoticeLog, Recall, Release
from ota_server.db.statistics import analyze_loaded
from ota_server.domain.rollout_plan import wave_sizes
from ota_server.domain.states import OPERATOR_OUTCOMES, CampaignKind, CampaignStatus, VinState
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.rollout import transitions
from ota_server.rollout.campaign_tick import plan_of as plan_of
from ota_server.rollout.fleet import Outbound as Outbound
from ota_server.rollout.rollback import rollback_of as rollback_of
from ota_server.schemas import CampaignPublic, Population
from ota_server.schemas.listing import Page
from ota_server.services import campaign_view, inventory, listing, owner_notifications
from ota_server.services import population as populations
from ota_server.services.owner_links import OwnerLinks

PENDING = VinState.PENDING.value
# Short names for the states of domain.states (defined there, once).
ACTIVE, PAUSED, CANCELLED, COMPLETED = (
    CampaignStatus.ACTIVE,
    CampaignStatus.PAUSED,
    CampaignStatus.CANCELLED,
    CampaignStatus.COMPLETED,
)
REMEDY, ROLLBACK = CampaignKind.REMEDY, CampaignKind.ROLLBACK


def _recall(session: Session, recall_id: int) -> Recall:
    recall = session.get(Recall, recall_id)
    if recall is None:
        raise NotFound(f"no recall {recall_id}")
    return recall


def remedy_campaign(session: Session, recall_id: int) -> Campaign | None:
    """The recall's own campaign (not a rollback campaign it launched)."""
    return session.scalar(select(Campaign).where(Campaign.recall_id == recall_id, Campaign.kind == REMEDY))


def notice(
    recall: Recall,
    campaign: Campaign,
    vin: str,
    nonce: str,
    repo_url: str,
    issued_at: datetime,
    owner_links: OwnerLinks | None = None,
) -> CampaignNotice:
    """The notice for one car: what to ask the Director about, what to check, what to tell the owner
    (with the car's owner-page link when ``owner_links`` is given)."""
    return CampaignNotice(
        campaign_id=campaign.id,
        vin=vin,
        nonce=nonce,
        recall_number=recall.campaign_number,
        title=recall.title,
        safety_recall=recall.safety_recall,
        repo_url=repo_url,
        issued_at=issued_at,
        preconditions=Preconditions.model_validate(recall.preconditions or {}),
        owner_notice=OwnerNotice.model_validate(recall.owner_notice) if recall.owner_notice else None,
        requires_consent=recall.requires_consent and not recall.safety_recall,
        owner_url=owner_links.url(vin, campaign.id) if owner_links is not None else None,
    )


def withdrawal(campaign_id: int, vin: str, nonce: str, issued_at: datetime) -> CampaignWithdrawal:
    return CampaignWithdrawal(campaign_id=campaign_id, vin=vin, nonce=nonce, issued_at=issued_at)


def order_key(campaign_id: int, vin: str) -> str:
    """A stable shuffle, so a canary is a spread of the population rather than its first VINs."""
    return hashlib.sha256(f"{campaign_id}:{vin}".encode()).hexdigest()


def already_launched(session: Session, recall: Recall) -> Conflict | None:
    """The refusal for a recall that has its campaign (None: it has none yet)."""
    campaign = remedy_campaign(session, recall.id)
    if campaign is None:
        return None
    return Conflict(f"recall {recall.campaign_number} is already launched as campaign {campaign.id}")


def launchable(session: Session, recall: Recall) -> tuple[Release, list[populations.Member]]:
    """The primary release and the cars of a recall that may be launched now; otherwise why not, raised.

    Conflict: launched already, or one of its releases waits for a signature. InvalidInput: it
    matches no car (a safety recall's request is refused for it too, rather than waiting
    for an approval that could only launch nothing).
    """
    if (refusal := already_launched(session, recall)) is not None:
        raise refusal
    releases = populations.releases_of(session, recall)
    for release in releases:
        if not release.published:
            raise Conflict(
                f"release {release.hardware_id} {release.version} is not published yet: "
                "it waits for its targets signature (`ota release sign`)"
            )
    members = populations.resolve_all(session, Population.model_validate(recall.population), releases)
    if not members:
        raise InvalidInput(f"recall {recall.campaign_number} matches no vehicle; nothing to launch")
    return releases[0], members


def launch(session: Session, recall_id: int, *, now: datetime) -> CampaignPublic:
    """Create the campaign for ``recall_id`` with its cars split into waves (see :func:`launchable`).

    A concurrent launch that stored its campaign first gets the same refusal as a later one.
    """
    recall = _recall(session, recall_id)
    release, members = launchable(session, recall)
    campaign = Campaign(
        recall_id=recall.id,
        release_id=release.id,
        population=len(members),
        launch_population=len(members),
        launched_at=now,
        status=ACTIVE,
        current_wave=0,
        error_baseline=0,
        status_changed_at=now,
        kind=REMEDY,
    )
    session.add(campaign)
    try:
        session.flush()
        vins = sorted((m.vin for m in members), key=lambda v: order_key(campaign.id, v))
        waves = [i for i, size in enumerate(wave_sizes(len(vins), plan_of(recall).waves)) for _ in range(size)]
        done = inventory.already_remedied(session, members)  # their manifests show the fix: nothing to send
        rows = [
            {
                "campaign_id": campaign.id,
                "vin": vin,
                "nonce": transitions.new_nonce(),
                "state": PENDING,
                "reason": None,
                "detail": None,
                "progress_rank": -1,
                "attempt": 0,
                "updated_at": now,
                "wave": wave,
            }
            | (inventory.remedied_row(vin) if vin in done else {})
            for vin, wave in zip(vins, waves, strict=True)
        ]
        transitions.enroll(session, rows)
        freeze_ecus(session, campaign.id, members)
        session.commit()
    except IntegrityError as exc:
        session.rollback()  # another request launched it between the check and the insert
        raise already_launched(session, recall) or Conflict(
            f"recall {recall.campaign_number} could not be launched: {exc.orig}"
        ) from exc
    analyze_loaded(session, len(rows), "campaign_vehicles", "campaign_ecus")  # before progress is first asked
    return campaign_view.public(session, campaign, now)


def freeze_ecus(session: Session, campaign_id: int, members: Sequence[populations.Member]) -> None:
    """Record each member's affected ECUs and the release for each (per-ECU progress counts them)."""
    hardware = dict(
        session.execute(
            select(Release.id, Release.hardware_id).where(Release.id.in_({r for m in members for r in m.release_ids}))
        ).all()
    )
    rows = [
        {
            "campaign_id": campaign_id,
            "vin": m.vin,
            "ecu_serial": serial,
            "hardware_id": hardware[rid],
            "release_id": rid,
        }
        for m in members
        for serial, rid in m.assignments().items()
    ]
    insert_rows(session, CampaignEcu, rows)  # COPY: an executemany was 0.9 s of a 30,000-car launch


LISTING = listing.by_id(
    "campaigns",
    Campaign.id,
    launched_at=listing.column(Campaign.launched_at, datetime),
    status=listing.column(Campaign.status, str),
)


def _filtered(recall_id: int | None, status: CampaignStatus | None, kind: CampaignKind | None) -> Select[Campaign]:
    query = select(Campaign)
    if recall_id is not None:
        query = query.where(Campaign.recall_id == recall_id)
    if status is not None:
        query = query.where(Campaign.status == status.value)
    if kind is not None:
        query = query.where(Campaign.kind == kind.value)
    return query


def page(
    session: Session,
    recall_id: int | None,
    status: CampaignStatus | None,
    kind: CampaignKind | None,
    sort: str | None,
    cursor: str | None,
    limit: int,
    now: datetime,
) -> Page[CampaignPublic]:
    rows, next_cursor = listing.page(session, _filtered(recall_id, status, kind), LISTING, sort, cursor, limit)
    return Page[CampaignPublic](items=[campaign_view.public(session, c, now) for c in rows], next_cursor=next_cursor)


def get(session: Session, campaign_id: int, now: datetime) -> CampaignPublic:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return campaign_view.public(session, campaign, now)


def unpublished(
    session: Session, repo_url: str, now: datetime, owner_links: OwnerLinks | None = None
) -> list[Outbound]:
    """Messages issued but never confirmed published (e.g. the server stopped mid-way).

    A released car with no confirmed publish gets its notice again, or its withdrawal
    when the campaign was cancelled, the car decommissioned or an operator recorded its outcome meanwhile.
    """
    rows = session.execute(
        select(CampaignVehicle, Campaign, Recall)
        .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
        .join(Recall, Recall.id == Campaign.recall_id)
        .where(CampaignVehicle.notice_published_at.is_(None), CampaignVehicle.notified_at.is_not(None))
        .order_by(CampaignVehicle.campaign_id)
    ).all()
    out: list[Outbound] = []
    for cv, campaign, recall in rows:
        if cv.state == VinState.WITHDRAWN.value or VinState(cv.state) in OPERATOR_OUTCOMES:
            out.append(withdrawal(campaign.id, cv.vin, cv.nonce, now))
        elif campaign.status != CANCELLED:
            assert cv.notified_at is not None
            out.append(notice(recall, campaign, cv.vin, cv.nonce, repo_url, cv.notified_at, owner_links))
    return out


def mark_published(session: Session, published: Sequence[Outbound], now: datetime) -> None:
    """Record that the broker accepted these messages, in the owner-notification log too."""
    by_campaign: dict[int, list[str]] = {}
    for message in published:
        by_campaign.setdefault(message.campaign_id, []).append(message.vin)
    for campaign_id, vins in by_campaign.items():
        transitions.mark_published(session, campaign_id, vins, now)
    log_rows = [
        {
            "campaign_id": m.campaign_id,
            "vin": m.vin,
            "kind": m.kind,
            "nonce": m.nonce,
            # the notice as sent, less the signed files it may carry (kept as the Director's rows)
            "payload": m.model_dump(mode="json", exclude_none=True, exclude={"director_metadata", "image_metadata"}),
            "published_at": now,
        }
        for m in published
    ]
    insert_rows(session, NoticeLog, log_rows)
    owner_notifications.record_published(session, published, now)
    session.commit()
