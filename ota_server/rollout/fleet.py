"""What the campaign engine asks of the rest of the server: the port the services implement.

The engine decides *when* a car joins, is assigned its fix and is notified; *who* matches a
recall's population, *which* images each ECU gets and *what* a notice says are the services'
(:class:`ota_server.services.campaign_fleet.CampaignFleet`). The engine imports no service:
the implementation is handed to the coordinator where the server is wired
(:mod:`ota_server.runtime`), and tests can hand it a fake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session

from firmware_bundles.messages import CampaignNotice, CampaignWithdrawal
from ota_server.db.models import Campaign, Recall

Outbound = CampaignNotice | CampaignWithdrawal  # a message for one car's campaign topic


class Encoded:
    """A message with its bytes, encoded once where it was made and published as they are.

    A launch's notices were measured where they were made, then encoded again to be published:
    ~0.5 s of the server's GIL at 30,000 cars, between the approval and the last notice (issue 19).
    The message itself is wanted only for the bookkeeping once the broker took it, so it is made
    then, when first asked for, from the template and the car's own fields (``changes``): a copy
    of the template per notice was ~0.2 s of the server's one core between the approval and the
    first notice (issue 19, session 21). The topic's VIN and the campaign are at hand without it.
    """

    __slots__ = ("_changes", "_message", "_template", "campaign_id", "payload", "vin")

    def __init__(self, message: Outbound, payload: bytes, changes: Mapping[str, Any] | None = None) -> None:
        """``message``, or with ``changes`` the template whose copy with them is the message; either
        without the car's signed Director files its payload may carry (they are the Director's rows).
        ``changes`` is kept as given, not copied (a launch's maker builds one per car)."""
        changes = changes or {}
        self.vin: str = changes.get("vin", message.vin)
        self.campaign_id: int = changes.get("campaign_id", message.campaign_id)
        self.payload = payload
        self._template = message
        self._changes = changes
        self._message: Outbound | None = None if changes else message

    @property
    def message(self) -> Outbound:
        if self._message is None:  # two threads asking at once make two equal copies: either will do
            self._message = self._template.model_copy(update=self._changes)
        return self._message


Sendable = Outbound | Encoded  # what the engine hands to be published


class Fleet(Protocol):
    def join_late(self, session: Session, campaign: Campaign, recall: Recall, now: datetime) -> int:
        """Enroll the cars that match a dynamic recall now and are not in its campaign yet; how many."""
        ...

    def assign(
        self, session: Session, campaign: Campaign, recall: Recall, vins: Sequence[str], now: datetime
    ) -> Callable[[], None]:
        """Queue or sign these cars' Director metadata: every affected ECU's image. Returns the writing of
        what is signed but not written yet, which the tick calls in its session before it commits: the
        notices carrying the chains can be made meanwhile (a launch's, while PostgreSQL writes them)."""
        ...

    def notice_maker(
        self, recall: Recall, campaign: Campaign, cars: Sequence[tuple[str, str]], now: datetime
    ) -> Callable[[], list[Sendable]]:
        """The campaign notice of each ``(vin, nonce)`` (with its bytes where they were made), made when
        the result is called. What they need is read here, in the tick's thread; the call touches no
        session and no ORM object, so the tick may make them in another thread while it writes."""
        ...
