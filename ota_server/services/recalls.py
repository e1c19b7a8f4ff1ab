"""Filing recalls: the regulator-facing record plus the population it covers."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import Select, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firmware_bundles.messages import MAX_MESSAGE_BYTES, Contact, encode
from ota_server.db.models import Campaign, LaunchRequest, Recall, RecallRelease, Release
from ota_server.domain.rollout_plan import start_problem
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.schemas import Population, RecallCreate, RecallPublic
from ota_server.schemas.listing import Page, RecallStatus
from ota_server.services import approvals, campaigns, groups, listing, owner_notices
from ota_server.services import population as populations
from ota_server.services.owner_links import OwnerLinks

CAMPAIGN_NUMBER = re.compile(r"^[0-9]{2}[A-Z]-[0-9]{3,6}$")  # ASCII digits: \d takes any Unicode digit


def _public(session: Session, recall: Recall, campaign: Campaign | None) -> RecallPublic:
    """``affected_count`` is a live preview until launch, then the frozen population."""
    population = Population.stored(recall.population)
    releases = populations.releases_of(session, recall)
    if campaign is not None:
        affected = campaign.population
    else:
        affected = len(populations.resolve_all(session, population, releases))
    return RecallPublic(
        id=recall.id,
        campaign_number=recall.campaign_number,
        manufacturer_number=recall.manufacturer_number,
        title=recall.title,
        defect=recall.defect,
        safety_risk=recall.safety_risk,
        remedy=recall.remedy,
        release_id=recall.release_id,
        release_ids=[r.id for r in releases],
        population=population,
        affected_count=affected,
        campaign_id=campaign.id if campaign else None,
        created_at=recall.created_at,
        safety_recall=recall.safety_recall,
        min_release_counter=recall.min_release_counter,
        remedy_type=recall.remedy_type,
        ecu_failure_policy=recall.ecu_failure_policy,
        owner_notice=recall.owner_notice,
        preconditions=recall.preconditions or {},
        requires_consent=recall.requires_consent,
        rollout=campaigns.plan_of(recall),
        dynamic=recall.dynamic,
        launch_request=approvals.public(request) if (request := approvals.for_recall(session, recall.id)) else None,
    )


def create(session: Session, body: RecallCreate, now: datetime, default_contact: Contact | None = None) -> RecallPublic:
    """File a recall; its owner notice is resolved now (``default_contact`` fills a missing contact) and kept."""
    number = body.campaign_number.strip().upper()
    if not CAMPAIGN_NUMBER.match(number):
        raise InvalidInput(
            f"campaign_number {body.campaign_number!r} must look like 24V-123 (YY, letter, dash, 3-6 digits)"
        )
    releases = _releases(session, body)
    release = releases[0]
    floor = release.release_counter if body.min_release_counter is None else body.min_release_counter
    if floor > release.release_counter:
        raise InvalidInput(
            f"min_release_counter {floor} is above the release's own counter {release.release_counter}: "
            "the cars would refuse the fix itself"
        )
    if session.scalar(select(Recall.id).where(Recall.campaign_number == number)) is not None:
        raise Conflict(f"recall {number} already exists")
    population = populations.normalised(groups.pinned(session, body.population))
    _check_rollout(session, body, now)
    _check_rollback_release(session, body, release)
    notice = owner_notices.resolve(body.owner_notice, safety_recall=body.safety_recall, fallback=default_contact)
    recall = Recall(
        campaign_number=number,
        manufacturer_number=body.manufacturer_number,
        title=body.title,
        defect=body.defect,
        safety_risk=body.safety_risk,
        remedy=body.remedy,
        release_id=release.id,
        population=population.model_dump(mode="json", exclude_none=True),
        created_at=now,
        safety_recall=body.safety_recall,
        min_release_counter=floor,
        remedy_type=body.remedy_type,
        ecu_failure_policy=body.ecu_failure_policy,
        owner_notice=notice.model_dump(mode="json"),
        preconditions=body.preconditions.model_dump(mode="json") if body.preconditions else None,
        rollout=body.rollout.model_dump(mode="json", exclude_none=True) if body.rollout else None,
        dynamic=body.dynamic,
        requires_consent=(not body.safety_recall) if body.requires_consent is None else body.requires_consent,
    )
    _check_notice_fits(recall)
    session.add(recall)
    try:
        session.flush()
        session.add_all(
            RecallRelease(recall_id=recall.id, hardware_id=r.hardware_id, release_id=r.id, position=i)
            for i, r in enumerate(releases)
        )
        session.flush()
        # The answer is built before the one commit: if building it fails, nothing was stored
        # and the audit trail records the failure, not a success that answered 500.
        answer = _public(session, recall, None)
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"recall {number} already exists") from exc
    return answer


def _releases(session: Session, body: RecallCreate) -> list[Release]:
    """The releases named, the primary first; at most one per hardware id (a car's ECU takes one image)."""
    releases: list[Release] = []
    by_hardware: dict[str, Release] = {}
    for release_id in body.all_release_ids:
        release = session.get(Release, release_id)
        if release is None:
            raise InvalidInput(f"release {release_id} does not exist")
        _not_retired(release, "release")
        if (other := by_hardware.get(release.hardware_id)) is not None:
            raise InvalidInput(
                f"releases {other.id} ({other.version}) and {release.id} ({release.version}) are both for hardware "
                f"{release.hardware_id!r}: a recall installs at most one release per hardware id"
            )
        by_hardware[release.hardware_id] = release
        releases.append(release)
    if len(releases) > 1:
        if body.population.hardware_id is not None:
            raise InvalidInput(
                "population.hardware_id applies to a one-release recall only: with several releases each "
                "release's own hardware id chooses the ECUs"
            )
        if body.min_release_counter is not None:
            raise InvalidInput(
                "min_release_counter applies to a one-release recall only: with several releases each "
                "release's own counter is its floor"
            )
        if body.rollout is not None and body.rollout.rollback_release_id is not None:
            raise InvalidInput(
                "rollout.rollback_release_id applies to a one-release recall only: one rollback release "
                "cannot cover several hardware ids"
            )
    return releases


def _check_rollout(session: Session, body: RecallCreate, now: datetime) -> None:
    if body.rollout is not None and (problem := start_problem(body.rollout, now)) is not None:
        raise InvalidInput(problem)
    given = body.owner_notice.safety_recall if body.owner_notice is not None else None
    if given is not None and given != body.safety_recall:
        raise InvalidInput(
            f"owner_notice.safety_recall is {given} but the recall's safety_recall is "
            f"{body.safety_recall}: the owner must be told what the recall is"
        )
    if body.safety_recall and body.requires_consent:
        raise InvalidInput("a safety recall never waits for the owner's consent: leave requires_consent out")
    if body.remedy_type == "dealer" and body.rollout is not None:
        raise InvalidInput("remedy_type dealer has no over-the-air rollout: leave rollout out")


def _not_retired(release: Release, field: str) -> None:
    if release.retired_at is not None:
        raise Conflict(
            f"{field}: release {release.id} ({release.hardware_id} {release.version}) is retired "
            f"({release.retire_reason}); name a release in use"
        )


def _check_rollback_release(session: Session, body: RecallCreate, release: Release) -> None:
    """A rollback release must be installable by the cars that took ``release``."""
    rollback_id = body.rollout.rollback_release_id if body.rollout else None
    if rollback_id is None:
        return
    rollback = session.get(Release, rollback_id)
    if rollback is None:
        raise InvalidInput(f"rollout.rollback_release_id: release {rollback_id} does not exist")
    _not_retired(rollback, "rollout.rollback_release_id")
    if not rollback.published:
        raise InvalidInput(
            f"rollout.rollback_release_id: release {rollback.hardware_id} {rollback.version} is not published yet "
            "(it waits for its targets signature)"
        )
    if rollback.hardware_id != release.hardware_id:
        raise InvalidInput(
            f"rollout.rollback_release_id: release {rollback_id} is for hardware {rollback.hardware_id!r}, "
            f"the recall's release for {release.hardware_id!r}"
        )
    if rollback.release_counter <= release.release_counter:
        raise InvalidInput(
            f"rollout.rollback_release_id: release {rollback_id} has release counter {rollback.release_counter}, "
            f"not above the recall release's {release.release_counter}: cars refuse a lower counter, so re-release "
            "the previous software under a higher one"
        )


def _check_notice_fits(recall: Recall) -> None:
    """A notice must stay under the wire limit the cars enforce, whatever texts the recall carries."""
    sample = Campaign(
        id=2**31 - 1, recall_id=1, release_id=recall.release_id, population=1, launched_at=recall.created_at
    )
    long_url = "https://" + "x" * 400
    links = OwnerLinks(b"sample", long_url)  # the owner-page link each car's notice carries
    message = campaigns.notice(recall, sample, "1" * 17, "n" * 32, long_url, recall.created_at, links)
    size = len(encode(message))
    if size > MAX_MESSAGE_BYTES:
        raise InvalidInput(
            f"the campaign notice would be {size} bytes, above the {MAX_MESSAGE_BYTES} cars accept: "
            "shorten the owner notice"
        )


def release_floor(recall: Recall, release: Release) -> int:
    """The minimum release counter the Director signs into this recall's assignments of ``release``.

    The recall's own floor is its primary release's; a further release's floor is its own counter.
    """
    if release.id != recall.release_id or recall.min_release_counter is None:
        return release.release_counter
    return recall.min_release_counter


def _campaign(session: Session, recall_id: int) -> Campaign | None:
    return campaigns.remedy_campaign(session, recall_id)


def get(session: Session, recall_id: int) -> RecallPublic:
    recall = session.get(Recall, recall_id)
    if recall is None:
        raise NotFound(f"no recall {recall_id}")
    return _public(session, recall, _campaign(session, recall_id))


LISTING = listing.by_id(
    "recalls",
    Recall.id,
    created_at=listing.column(Recall.created_at, datetime),
    campaign_number=listing.column(Recall.campaign_number, str),
)


def _filtered(status: RecallStatus | None, q: str | None) -> Select[Recall]:
    query = select(Recall)
    if q is not None:
        words = q.strip().lower()
        query = query.where(
            or_(
                *(
                    func.lower(column).contains(words, autoescape=True)
                    for column in (Recall.campaign_number, Recall.manufacturer_number, Recall.title)
                )
            )
        )
    remedy = select(Campaign.id).where(Campaign.recall_id == Recall.id, Campaign.kind == "remedy")
    waiting = exists().where(LaunchRequest.recall_id == Recall.id, LaunchRequest.approved_at.is_(None))
    if status == "not_launched":
        query = query.where(~remedy.exists(), ~waiting)
    elif status == "awaiting_approval":
        query = query.where(~remedy.exists(), waiting)
    elif status is not None:
        query = query.where(remedy.where(Campaign.status == status).exists())
    return query


def page(
    session: Session, status: RecallStatus | None, q: str | None, sort: str | None, cursor: str | None, limit: int
) -> Page[RecallPublic]:
    """Recalls by status (not launched, awaiting approval, or the campaign's) and text in number or title."""
    rows, next_cursor = listing.page(session, _filtered(status, q), LISTING, sort, cursor, limit)
    return Page[RecallPublic](
        items=[_public(session, r, _campaign(session, r.id)) for r in rows], next_cursor=next_cursor
    )
