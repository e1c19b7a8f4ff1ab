"""Consent bound to what is signed: the offer the owner answers, and the head unit's local interface.

The agent asks only after the Director's and the Image repository's metadata are
verified: an :class:`Offer` names the exact version and bundle hash of every image the
signed metadata assigns, and the answer is journaled with :attr:`Offer.key`. The car
installs only images that key covers; a changed assignment asks again.

An answer reaches the agent in one of two ways:

* on the car, through :class:`ConsentBox` (files under ``<state_dir>/consent/``): the
  agent writes ``request.json`` (what to show), the head unit or
  ``vehicle-agent consent accept|decline|postpone`` writes ``answer.json`` naming the
  same campaign and images key; an answer for anything else is ignored;
* from the owner page, only inside the Director's verified targets metadata
  (:mod:`firmware_bundles.consent`), and only for the same campaign and images key.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from firmware_bundles.assignment import Assignment
from firmware_bundles.consent import SignedConsent, images_key
from firmware_bundles.messages import CampaignNotice
from vehicle_agent.config import AgentConfig
from vehicle_agent.journal import write_atomically
from vehicle_agent.owner import Consent, LoggingOwnerHook, OwnerHook, describe

log = logging.getLogger(__name__)

REQUEST = "request.json"
ANSWER = "answer.json"


class Channel:
    """Where an answer came from (as journaled and reported)."""

    HEAD_UNIT = "head_unit"
    OWNER_PAGE = "owner_page"
    CLI = "cli"


@dataclass(frozen=True)
class OfferedImage:
    ecu_serial: str
    version: str
    sha256: str
    length: int


@dataclass(frozen=True)
class Offer:
    """What the verified metadata assigns this car, and the owner-page answer signed with it (if any)."""

    images: tuple[OfferedImage, ...]
    remote: SignedConsent | None = None
    remote_problem: str = ""  # a ``consent`` field that did not parse

    @classmethod
    def of(cls, assignments: Sequence[Assignment], remote: SignedConsent | None, problem: str = "") -> Offer:
        images = tuple(OfferedImage(a.ecu_serial, a.version, a.sha256, a.length) for a in assignments)
        return cls(images, remote, problem)

    @property
    def key(self) -> str:
        return images_key(i.sha256 for i in self.images)

    def summary(self) -> str:
        return "; ".join(f"ECU {i.ecu_serial}: version {i.version}, sha256 {i.sha256}" for i in self.images)


def remote_answer(offer: Offer, campaign_id: int) -> tuple[Consent | None, str]:
    """The owner page's answer when it binds this campaign and these images; else None and why not."""
    if offer.remote_problem:
        return None, f"ignored the signed owner-page answer: {offer.remote_problem}"
    remote = offer.remote
    if remote is None:
        return None, ""
    if remote.campaign_id != campaign_id:
        return None, f"ignored the signed owner-page answer: it is for campaign {remote.campaign_id}"
    if remote.images != offer.key:
        return None, (
            f"ignored the signed owner-page answer: it was given for images {remote.images}, "
            f"the signed assignment names {offer.key}"
        )
    return Consent(remote.answer), ""


def covers(consented_key: str, sha256s: Sequence[str]) -> bool:
    """Whether the images key the owner consented to names every one of ``sha256s``."""
    allowed = set(consented_key.split(",")) if consented_key else set()
    return bool(sha256s) and set(sha256s) <= allowed


# -- the head unit's local interface -------------------------------------------------


def request_body(notice: CampaignNotice, offer: Offer, asked_at: datetime) -> dict[str, Any]:
    """What ``request.json`` holds: the notice's text and the exact signed images."""
    owner = notice.owner_notice
    return {
        "campaign_id": notice.campaign_id,
        "vin": notice.vin,
        "recall_number": notice.recall_number,
        "title": notice.title,
        "text": describe(notice),
        "purpose": owner.purpose if owner else "",
        "what_changes": owner.what_changes if owner else "",
        "expected_minutes": owner.expected_minutes if owner else None,
        "unavailable_functions": list(owner.unavailable_functions) if owner else [],
        "contact": owner.contact.model_dump(mode="json", exclude_none=True) if owner else None,
        "owner_url": notice.owner_url,
        "images": [i.__dict__ for i in offer.images],
        "images_key": offer.key,
        "asked_at": asked_at.isoformat(),
        "answers": [c.value for c in Consent],
    }


class ConsentError(ValueError):
    """A local answer that cannot be written (no request pending, or a malformed one)."""


class ConsentBox:
    """``<state_dir>/consent/``: the pending request and the owner's answer, one file each."""

    def __init__(self, directory: Path, *, durable: bool = True) -> None:
        self.directory = directory
        self._durable = durable

    @property
    def request_path(self) -> Path:
        return self.directory / REQUEST

    @property
    def answer_path(self) -> Path:
        return self.directory / ANSWER

    def _write(self, path: Path, body: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(body, indent=2).encode(), durable=self._durable)

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            body = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def pending(self) -> dict[str, Any] | None:
        return self._read(self.request_path)

    def ask(self, body: dict[str, Any]) -> None:
        """Publish a request (kept unless it changed: the head unit may be showing it)."""
        current = self.pending()
        if current is None or {k: v for k, v in current.items() if k != "asked_at"} != {
            k: v for k, v in body.items() if k != "asked_at"
        }:
            self._write(self.request_path, body)

    def answer(self, answer: Consent, channel: str = Channel.CLI, at: datetime | None = None) -> dict[str, Any]:
        """Answer the pending request (what the head unit or the CLI does)."""
        request = self.pending()
        if request is None:
            raise ConsentError(f"no consent request pending in {self.directory}")
        body = {
            "campaign_id": request.get("campaign_id"),
            "images_key": request.get("images_key"),
            "answer": answer.value,
            "channel": channel,
            "at": (at or datetime.now(UTC)).isoformat(),
        }
        self._write(self.answer_path, body)
        return body

    def take(self, campaign_id: int, key: str) -> tuple[Consent, str] | None:
        """The answer for this campaign and images key, with its channel; a stale one is dropped."""
        body = self._read(self.answer_path)
        if body is None:
            return None
        if body.get("campaign_id") != campaign_id or body.get("images_key") != key:
            log.warning("consent: ignored an answer for campaign %s images %s", body.get("campaign_id"), key)
            self.clear_answer()
            return None
        try:
            answer = Consent(str(body.get("answer")))
        except ValueError:
            self.clear_answer()
            return None
        channel = body.get("channel") if body.get("channel") in (Channel.HEAD_UNIT, Channel.CLI) else Channel.HEAD_UNIT
        return answer, str(channel)

    def clear_answer(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.answer_path.unlink()

    def close(self) -> None:
        """The question is settled (answered, or no longer asked): remove both files."""
        self.clear_answer()
        with contextlib.suppress(FileNotFoundError):
            self.request_path.unlink()


class HeadUnitOwner:
    """The default owner hook on a car: notices in the log, consent through :class:`ConsentBox`.

    It never waits: with no answer yet the update is postponed and asked again at the
    gate's next look (``[vehicle] retry_interval``), which also re-reads the signed metadata
    for an owner-page answer.
    """

    def __init__(self, box: ConsentBox, clock: Any = None) -> None:
        self.box = box
        self._clock = clock or (lambda: datetime.now(UTC))
        self.channel = Channel.HEAD_UNIT

    async def show_notice(self, notice: CampaignNotice) -> None:
        log.info("%s: owner notice: %s", notice.vin, describe(notice))

    async def ask_consent(self, notice: CampaignNotice, offer: Offer) -> Consent:
        self.box.ask(request_body(notice, offer, self._clock()))
        taken = self.box.take(notice.campaign_id, offer.key)
        if taken is None:
            self.channel = Channel.HEAD_UNIT
            return Consent.POSTPONE
        answer, self.channel = taken
        if answer is Consent.POSTPONE:
            self.box.clear_answer()  # asked again at the next look
        else:
            self.box.close()
        return answer

    async def consent_given_elsewhere(self, notice: CampaignNotice, answer: Consent) -> None:
        """Answered on the owner page: the head unit's question is withdrawn."""
        self.box.close()
        log.info("%s: the owner answered %s on the owner page", notice.vin, answer)

    async def show_result(self, notice: CampaignNotice, state: Any, detail: str) -> None:
        self.box.close()
        log.info("%s: owner result for campaign %s: %s %s", notice.vin, notice.campaign_id, state, detail)


def default_owner(config: AgentConfig, clock: Callable[[], datetime]) -> OwnerHook:
    """The head unit's local interface (``[vehicle] consent = "ask"``), or a fixed answer for a test rig."""
    if config.vehicle.consent == "ask":
        return HeadUnitOwner(ConsentBox(config.state_dir / "consent", durable=config.durable), clock)
    return LoggingOwnerHook(Consent(config.vehicle.consent))
