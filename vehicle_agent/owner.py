"""The owner's side of a campaign: the notice before, consent for non-safety updates, the result after.

The agent shows through an :class:`OwnerHook` (a head unit, an app push, a log line)
and logs in its journal what it showed. Safety recalls never wait for consent; they
still show the notice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from firmware_bundles.messages import CampaignNotice, ReportState

if TYPE_CHECKING:
    from vehicle_agent.consent import Offer

log = logging.getLogger(__name__)


class Consent(StrEnum):
    ACCEPT = "accept"
    DECLINE = "decline"
    POSTPONE = "postpone"


class OwnerHook(Protocol):
    # Where the last answer came from: head_unit, cli (journaled and reported with it).
    channel: str

    async def show_notice(self, notice: CampaignNotice) -> None:
        """Before: purpose, safety recall or not, what changes, duration, contact."""
        ...

    async def ask_consent(self, notice: CampaignNotice, offer: Offer) -> Consent:
        """Only for non-safety updates that require consent, once the signed metadata is
        verified: ``offer`` names the exact version and hash of each image; may wait."""
        ...

    async def consent_given_elsewhere(self, notice: CampaignNotice, answer: Consent) -> None:
        """The owner answered on the owner page (signed metadata): stop asking in the car."""
        ...

    async def show_result(self, notice: CampaignNotice, state: ReportState, detail: str) -> None:
        """After: ``state`` is terminal (remedied is success; failed, rolled_back, withdrawn are not)."""
        ...


def describe(notice: CampaignNotice) -> str:
    """One line for logs and the journal."""
    owner = notice.owner_notice
    kind = "safety recall" if notice.safety_recall else "update"
    text = f"{kind} {notice.recall_number}: {notice.title}"
    if owner is not None:
        text += f" ({owner.purpose}; about {owner.expected_minutes} min; contact {owner.contact.name})"
    return text[:1000]


class LoggingOwnerHook:
    """The default for a car without a screen: logs, and answers consent with ``consent``.

    ``postpone`` (the default) means a non-safety update waits until someone answers
    through another hook; it never installs without an owner's yes.
    """

    channel = "head_unit"

    def __init__(self, consent: Consent = Consent.POSTPONE) -> None:
        self._consent = consent

    async def show_notice(self, notice: CampaignNotice) -> None:
        log.info("%s: owner notice: %s", notice.vin, describe(notice))

    async def ask_consent(self, notice: CampaignNotice, offer: Offer) -> Consent:
        log.info(
            "%s: consent for campaign %s (%s): %s (configured answer)",
            notice.vin,
            notice.campaign_id,
            offer.summary(),
            self._consent,
        )
        return self._consent

    async def consent_given_elsewhere(self, notice: CampaignNotice, answer: Consent) -> None:
        log.info("%s: the owner answered %s on the owner page", notice.vin, answer)

    async def show_result(self, notice: CampaignNotice, state: ReportState, detail: str) -> None:
        log.info("%s: owner result for campaign %s: %s %s", notice.vin, notice.campaign_id, state, detail)


@dataclass
class ScriptedOwner:
    """Answers consent from a script (the last answer repeats) and records what was shown."""

    answers: Sequence[Consent] = (Consent.ACCEPT,)
    shown: list[tuple[str, int, str]] = field(default_factory=list)  # (what, campaign, text)
    asked: int = 0
    offers: list[Offer] = field(default_factory=list)  # what each ask showed
    channel: str = "head_unit"

    async def show_notice(self, notice: CampaignNotice) -> None:
        self.shown.append(("notice", notice.campaign_id, describe(notice)))

    async def ask_consent(self, notice: CampaignNotice, offer: Offer) -> Consent:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        self.offers.append(offer)
        self.shown.append(("consent", notice.campaign_id, answer.value))
        return answer

    async def consent_given_elsewhere(self, notice: CampaignNotice, answer: Consent) -> None:
        self.shown.append(("consent_elsewhere", notice.campaign_id, answer.value))

    async def show_result(self, notice: CampaignNotice, state: ReportState, detail: str) -> None:
        self.shown.append(("result", notice.campaign_id, state.value))
