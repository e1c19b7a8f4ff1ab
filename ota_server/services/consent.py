"""The owner's page for one car and campaign: what it shows, and the answer signed for the car.

Each car's notice carries its page's link (:mod:`ota_server.services.owner_links`). The page shows the
notice's text with the exact version and bundle sha256 the Director assigns the car; its
form carries a nonce (an HMAC of the token and those hashes), so a post from elsewhere or
for other images is refused. An answer is signed into the car's Director targets metadata
(:meth:`ota_server.signing.director.Director.sign_consent`): the car accepts it from
there only, for the same images.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from firmware_bundles.consent import REMOTE_ANSWERS, RemoteAnswer, SignedConsent, images_key
from firmware_bundles.messages import OwnerNotice
from ota_server.db.models import Campaign, CampaignVehicle, Recall
from ota_server.domain.states import NOT_STARTED, VinState
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.services import owner_notifications
from ota_server.services.campaigns import CANCELLED, REMEDY
from ota_server.services.owner_links import OwnerLinks
from ota_server.signing.director import Director


@dataclass(frozen=True)
class Image:
    ecu_serial: str
    version: str
    sha256: str
    length: int


@dataclass(frozen=True)
class OwnerPage:
    """What the owner page shows for one car and campaign."""

    token: str
    vin: str
    recall: Recall
    owner_notice: OwnerNotice | None
    state: VinState
    images: tuple[Image, ...]
    signed_answer: SignedConsent | None  # the answer the car will read for these images, if any
    closed_because: str  # empty: the owner can answer now

    @property
    def images_key(self) -> str:
        return images_key(i.sha256 for i in self.images)


# What the page says of a car an operator took out of the recall (no update comes to it any more).
_OPERATOR_RECORDS = {
    VinState.REMEDIED_AT_DEALER: "Your car was remedied at a dealer: it needs no update from this recall.",
    VinState.INSPECTED_NOT_NEEDED: "Your car was inspected and does not need this update.",
    VinState.UNREACHABLE: "This update was withdrawn for your car: the recall records it as out of reach.",
}


def page(session: Session, director: Director, links: OwnerLinks, token: str) -> OwnerPage:
    campaign_id, vin = links.parse(token)
    row = session.get(CampaignVehicle, (campaign_id, vin))
    campaign = session.get(Campaign, campaign_id)
    if row is None or campaign is None:
        raise NotFound("no such owner page")
    recall = session.get(Recall, campaign.recall_id)
    assert recall is not None
    assigned, signed = director.assigned(session, vin)
    images = tuple(
        Image(serial, str(tf.custom.get("version", "")), tf.hashes.get("sha256", ""), tf.length)
        for serial, tf in sorted(assigned.items())
    )
    key = images_key(i.sha256 for i in images)
    state = VinState(row.state)
    closed = ""
    if state in _OPERATOR_RECORDS:
        closed = _OPERATOR_RECORDS[state]
    elif recall.safety_recall or not recall.requires_consent:
        closed = "This is a safety recall: it installs without asking."
    elif campaign.kind != REMEDY or campaign.status == CANCELLED:
        closed = "This update was withdrawn."
    elif state not in NOT_STARTED or state is VinState.CONSENTED:
        closed = f"Your car has already answered or started (it is {state.value.replace('_', ' ')})."
    elif not images:
        closed = "Your car has not been told what to install yet; come back later."
    if signed is not None and (signed.campaign_id != campaign_id or signed.images != key):
        signed = None  # an answer for something else: the car ignores it too
    notice = OwnerNotice.model_validate(recall.owner_notice) if recall.owner_notice else None
    return OwnerPage(token, vin, recall, notice, state, images, signed, closed)


def answer(
    session: Session,
    director: Director,
    links: OwnerLinks,
    token: str,
    *,
    images: str,
    nonce: str,
    given: str,
    now: datetime,
) -> SignedConsent:
    """Sign the owner's ``given`` answer for ``images`` into the car's Director metadata; the caller commits.

    Refused: a bad token (404), a form nonce not made for this token and these images (422),
    images that are no longer what the car is assigned, or a page that cannot be answered (409).
    """
    if given not in REMOTE_ANSWERS:
        raise InvalidInput(f"answer must be one of {', '.join(REMOTE_ANSWERS)}")
    shown = page(session, director, links, token)
    if not links.nonce_ok(token, images, nonce):
        raise InvalidInput("the form was not issued by this page for these images; reload the page")
    if shown.closed_because:
        raise Conflict(shown.closed_because)
    if images != shown.images_key:
        raise Conflict("the update assigned to your car changed since the page was shown; reload the page")
    campaign_id, vin = links.parse(token)
    chosen: RemoteAnswer = "accept" if given == "accept" else "decline"
    consent = SignedConsent(campaign_id, images, chosen, now.isoformat())
    if director.sign_consent(session, vin, consent, now) is None:
        raise Conflict("your car has not been told what to install yet; come back later")
    owner_notifications.record(
        session,
        vin=vin,
        campaign_id=campaign_id,
        kind="consent_answer",
        channel="owner_page",
        text=f"The owner answered {chosen} on the owner page for images {images}.",
        at=now,
        detail=f"{chosen} {images}",
    )  # the same transaction as the signed answer: both or neither
    return consent
