"""What one car's owner may know, in the owner's language: the car, each recall, what happened, whom to call.

:func:`build` is the one place that turns a car's campaign rows into owner words; the
public look-up (``/lookup`` and ``/api/v1/public/recalls``) renders it, and any other owner
page can too::

    view = owner_view.build(session, vin, now, lang, OwnerSettings.of(settings))

Only what a regulator's recall site would show: the car's make, model and year, each
recall's public text, a coarse status with a date, what happened in plain words, what to
do (said once), the recall's named contact (or the manufacturer's configured one), and
what the check covers. No campaign ids, nonces, attempts or failure reasons. A VIN the
service has no record of says so: that is not the same as "no recall".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from firmware_bundles.messages import Contact, OwnerNotice
from ota_server.config import Settings
from ota_server.db.models import Campaign, CampaignVehicle, Recall, Vehicle
from ota_server.domain.states import INSTALLING, VinState
from ota_server.services import owner_notices
from ota_server.services import population as populations
from ota_server.services.campaigns import CANCELLED, REMEDY, ROLLBACK
from ota_server.web.i18n import text
from ota_server.web.schemas import OwnerStatus

S = VinState


@dataclass(frozen=True)
class OwnerSettings:
    """The manufacturer the pages speak for, its default contact and its dealer locator."""

    manufacturer: str
    dealer_locator_url: str
    default_contact: Contact | None

    @classmethod
    def of(cls, settings: Settings) -> OwnerSettings:
        return cls(
            manufacturer=settings.manufacturer_name,
            dealer_locator_url=settings.dealer_locator_url,
            default_contact=owner_notices.default_contact(
                settings.manufacturer_contact_name,
                settings.manufacturer_contact_role,
                settings.manufacturer_contact_phone,
                settings.manufacturer_contact_email,
            ),
        )


@dataclass(frozen=True)
class RecallView:
    number: str
    title: str
    safety_recall: bool
    problem: str
    risk: str
    remedy: str
    status: OwnerStatus
    status_text: str
    fixed: bool
    remedied_on: date | None
    what_happened: str
    what_to_do: str
    notice: OwnerNotice | None  # minutes and unavailable functions, for an open recall
    contact: Contact | None


@dataclass(frozen=True)
class OwnerView:
    lang: str
    vin: str
    known: bool  # False: no record of this VIN (not the same as no recall)
    make: str
    model: str
    model_year: int | None
    manufacturer: str
    recalls: tuple[RecallView, ...]
    summary: str
    coverage: str
    dealer_locator_url: str
    checked_at: datetime

    @property
    def open_recalls(self) -> int:
        return sum(1 for r in self.recalls if not r.fixed)


@dataclass(frozen=True)
class _Said:
    status: OwnerStatus
    status_text: str
    fixed: bool
    on: date | None
    happened: str
    todo: str


def build(session: Session, vin: str, now: datetime, lang: str, owner: OwnerSettings) -> OwnerView:
    """The owner's view of ``vin`` (already a valid, normal VIN) at ``now``, in ``lang``."""
    vehicle = session.scalar(select(Vehicle).where(Vehicle.vin == vin))
    rows = session.execute(
        select(CampaignVehicle, Campaign, Recall)
        .join(Campaign, Campaign.id == CampaignVehicle.campaign_id)
        .join(Recall, Recall.id == Campaign.recall_id)
        .where(CampaignVehicle.vin == vin)
        .order_by(Campaign.id)
    ).all()
    latest: dict[int, tuple[CampaignVehicle, Campaign, Recall]] = {}
    for cv, campaign, recall in rows:
        latest[recall.id] = (cv, campaign, recall)  # a rollback campaign comes after its remedy campaign
    recalls = [_recall(recall, _said(cv, campaign, recall, lang), owner) for cv, campaign, recall in latest.values()]
    if vehicle is not None:  # filed recalls not launched yet: the car is affected, the remedy is not available
        launched = select(Campaign.recall_id).where(Campaign.kind == REMEDY)
        for recall in session.scalars(select(Recall).where(Recall.id.not_in(launched)).order_by(Recall.id)):
            if populations.of_recall(session, recall, vins=[vin]):
                said = _Said(
                    "remedy_not_yet_available",
                    text(lang, "status_not_available"),
                    False,
                    None,
                    text(lang, "happened_not_launched"),
                    text(lang, "todo_later"),
                )
                recalls.append(_recall(recall, said, owner))
    known = vehicle is not None or bool(rows)
    manufacturer = owner.manufacturer
    open_count = sum(1 for r in recalls if not r.fixed)
    if not known:
        summary = text(lang, "no_record", manufacturer=manufacturer)
    elif not recalls:
        summary = text(lang, "no_recall", manufacturer=manufacturer)
    elif open_count:
        summary = text(lang, "open_recalls", count=open_count)
    else:
        summary = text(lang, "all_fixed")
    return OwnerView(
        lang=lang,
        vin=vin,
        known=known,
        make=(vehicle.make or manufacturer) if vehicle else "",
        model=vehicle.model if vehicle else "",
        model_year=vehicle.model_year if vehicle else None,
        manufacturer=manufacturer,
        recalls=tuple(recalls),
        summary=summary,
        coverage=text(lang, "coverage", manufacturer=manufacturer),
        dealer_locator_url=owner.dealer_locator_url,
        checked_at=now,
    )


def _recall(recall: Recall, said: _Said, owner: OwnerSettings) -> RecallView:
    notice = OwnerNotice.model_validate(recall.owner_notice) if recall.owner_notice else None
    return RecallView(
        number=recall.campaign_number,
        title=recall.title,
        safety_recall=recall.safety_recall,
        problem=recall.defect,
        risk=recall.safety_risk,
        remedy=recall.remedy,
        status=said.status,
        status_text=said.status_text,
        fixed=said.fixed,
        remedied_on=said.on,
        what_happened=said.happened,
        what_to_do=said.todo,
        notice=notice,
        contact=notice.contact if notice else owner.default_contact,
    )


# The states that close a recall for the car: (status, its words, what happened), with nothing left to do.
_CLOSED: dict[S, tuple[OwnerStatus, str, str]] = {
    S.REMEDIED: ("remedied", "status_fixed", "happened_remedied"),
    S.REMEDIED_AT_DEALER: ("remedied_at_dealer", "status_dealer", "happened_dealer"),
    S.INSPECTED_NOT_NEEDED: ("not_needed", "status_not_needed", "happened_inspected"),
}


def _said(cv: CampaignVehicle, campaign: Campaign, recall: Recall, lang: str) -> _Said:
    """What happened to this car in its latest campaign of the recall, and what to do: each said once."""
    state = S(cv.state)
    on = cv.updated_at.date()
    day = on.isoformat()
    open_text = text(lang, "status_open")
    if campaign.kind == ROLLBACK:
        return _Said("not_remedied", open_text, False, None, text(lang, "happened_returned"), text(lang, "todo_later"))
    if state in _CLOSED:
        status, status_key, happened_key = _CLOSED[state]
        return _Said(
            status, text(lang, status_key), True, on, text(lang, happened_key, date=day), text(lang, "todo_nothing")
        )
    if state is S.WITHDRAWN or (campaign.status == CANCELLED and state not in INSTALLING):
        return _Said(
            "remedy_not_yet_available",
            text(lang, "status_not_available"),
            False,
            None,
            text(lang, "happened_withdrawn", date=day),
            text(lang, "todo_later"),
        )
    happened, todo = _open_story(cv, recall, state, day, lang)
    return _Said("not_remedied", open_text, False, None, happened, todo)


def _open_story(cv: CampaignVehicle, recall: Recall, state: VinState, day: str, lang: str) -> tuple[str, str]:
    if state in (S.FAILED, S.ROLLED_BACK, S.TIMED_OUT):
        happened = text(lang, "happened_timed_out" if state is S.TIMED_OUT else "happened_rolled_back", date=day)
        if cv.next_retry_at is not None:
            return happened, text(lang, "todo_retry", date=cv.next_retry_at.date().isoformat())
        return happened, text(lang, "todo_dealer")
    if state is S.DECLINED:
        return text(lang, "happened_declined", date=day), text(lang, "todo_dealer")
    if state is S.UNREACHABLE:
        return text(lang, "happened_unreachable", date=day), text(lang, "todo_dealer")
    if state in INSTALLING:
        return text(lang, "happened_installing", date=day), text(lang, "todo_wait")
    if state is S.DEFERRED:
        return text(lang, "happened_waiting", date=day), text(lang, "todo_wait")
    if state is S.NOTIFIED and recall.requires_consent and not recall.safety_recall:
        return text(lang, "happened_asks"), text(lang, "todo_answer")
    if state in (S.NOTIFIED, S.CONSENTED) and cv.notified_at is not None:
        return text(lang, "happened_notified", date=cv.notified_at.date().isoformat()), text(lang, "todo_wait")
    return text(lang, "happened_pending"), text(lang, "todo_wait")
