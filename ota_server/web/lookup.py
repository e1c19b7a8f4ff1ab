"""The public VIN look-up: which recalls affect a car and whether it is fixed, as an owner sees it.

Only what a regulator's recall site would show leaves this module: the recall's public
text and a coarse remedy status with a date. No campaign ids, nonces, attempts, failure
reasons, other VINs, or whether the VIN is registered at all (an unknown VIN and a car
with no recall get the same answer, so the look-up cannot be used to enumerate the fleet).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ota_server.clock import Clock
from ota_server.db.models import Campaign, CampaignVehicle, Recall
from ota_server.domain.states import IN_FLIGHT, VinState
from ota_server.errors import RateLimited
from ota_server.infra.ratelimit import TokenBuckets
from ota_server.services import population as populations
from ota_server.services.campaigns import CANCELLED, REMEDY, ROLLBACK
from ota_server.web.schemas import OwnerStatus, PublicLookup, PublicRecall
from ota_server.web.timeline import normalised_vin

S = VinState
FIXED_TEXT = "Fixed"
NOT_FIXED_TEXT = "Not fixed yet"
ON_ITS_WAY = (
    "A free over-the-air update is on its way to your vehicle. It installs by itself while the vehicle "
    "is parked with the ignition off. If it has not been fixed within 30 days, contact a dealer."
)
SEE_A_DEALER = "Contact a dealer to have the free repair done."
NOT_AVAILABLE = "The remedy is not available yet. You will be notified when it is; until then, follow the advice above."
NOTHING = "Nothing to do."


def _owner_view(cv: CampaignVehicle, campaign: Campaign) -> tuple[OwnerStatus, str, bool, str, datetime | None]:
    """(status, status text, fixed, what to do, remedied at) from the car's row in its latest campaign."""
    state = S(cv.state)
    if campaign.kind == ROLLBACK:
        # The fix was withdrawn and this car is (being) returned to its previous software.
        return "not_remedied", NOT_FIXED_TEXT, False, "The first update was withdrawn. " + NOT_AVAILABLE, None
    if state is S.REMEDIED:
        return "remedied", FIXED_TEXT, True, NOTHING, cv.updated_at
    if state is S.REMEDIED_AT_DEALER:
        return "remedied_at_dealer", "Fixed at a dealer", True, NOTHING, cv.updated_at
    if state is S.INSPECTED_NOT_NEEDED:
        return "not_needed", "No repair needed (inspected)", True, NOTHING, cv.updated_at
    if campaign.status == CANCELLED:
        return "remedy_not_yet_available", NOT_FIXED_TEXT, False, NOT_AVAILABLE, None
    if state in IN_FLIGHT or cv.next_retry_at is not None:
        return "not_remedied", NOT_FIXED_TEXT, False, ON_ITS_WAY, None
    return "not_remedied", NOT_FIXED_TEXT, False, SEE_A_DEALER, None


def _public(
    recall: Recall, status: OwnerStatus, text: str, fixed: bool, todo: str, at: datetime | None
) -> PublicRecall:
    return PublicRecall(
        recall_number=recall.campaign_number,
        title=recall.title,
        safety_recall=recall.safety_recall,
        summary=recall.defect,
        safety_risk=recall.safety_risk,
        remedy=recall.remedy,
        status=status,
        status_text=text,
        fixed=fixed,
        remedied_on=at.date() if at else None,
        what_to_do=todo,
    )


def lookup(session: Session, raw_vin: str, now: datetime) -> PublicLookup:
    """Raise InvalidInput (422) for a malformed VIN; otherwise the recalls affecting it."""
    vin = normalised_vin(raw_vin)
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
    recalls = [_public(recall, *_owner_view(cv, campaign)) for cv, campaign, recall in latest.values()]
    # Filed recalls not launched yet: the car is affected, the remedy is not available.
    launched = select(Campaign.recall_id).where(Campaign.kind == REMEDY)
    for recall in session.scalars(select(Recall).where(Recall.id.not_in(launched)).order_by(Recall.id)):
        if populations.of_recall(session, recall, vins=[vin]):  # any of its releases' hardware
            recalls.append(_public(recall, "remedy_not_yet_available", NOT_FIXED_TEXT, False, NOT_AVAILABLE, None))
    open_count = sum(1 for r in recalls if not r.fixed)
    if not recalls:
        message = "No recall affects this vehicle."
    elif open_count:
        message = f"{open_count} open recall{'s' if open_count > 1 else ''}: not fixed yet."
    else:
        message = "Every recall affecting this vehicle is fixed."
    return PublicLookup(vin=vin, checked_at=now, open_recalls=open_count, recalls=recalls, message=message)


class AddressBuckets:
    """Token buckets per client address (IPv6 by /64), at most ``max_keys`` kept (oldest dropped).

    The public look-up has no token to key by; bounding the table keeps a flood of
    addresses from growing memory without limit.
    """

    def __init__(self, per_minute: float, burst: int, clock: Clock, *, max_keys: int = 10_000) -> None:
        self._buckets = TokenBuckets(per_minute / 60.0, burst, clock, max_keys=max_keys)

    def __len__(self) -> int:
        return len(self._buckets)

    @staticmethod
    def key(address: str | None) -> str:
        if not address:
            return "unknown"
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address[:64]
        if ip.version == 6:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def take(self, address: str | None) -> None:
        wait = self._buckets.wait_for(self.key(address))
        if wait:
            raise RateLimited(f"too many look-ups from your address; try again in {wait:.0f}s", wait)
