"""The owner's answer as the Director signs it, bound to exactly the images it names.

An answer given away from the car (the owner page) reaches the car only inside the
Director's signed targets metadata for that VIN, as the top-level field ``consent``::

    {"campaign_id": 7, "images": "<sha256>[,<sha256>...]", "answer": "accept", "at": "<ISO 8601>"}

``images`` is :func:`images_key` of every bundle the same targets metadata assigns, so
both sides compute it from the one signed document. The car takes the answer only when
its campaign and images match what it would install; any other answer (unsigned, for
another campaign, for other images) is ignored with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

CONSENT_FIELD = "consent"
RemoteAnswer = Literal["accept", "decline"]
REMOTE_ANSWERS: tuple[RemoteAnswer, ...] = ("accept", "decline")
_MAX_KEY = 65 * 64  # up to 64 images


def images_key(sha256s: Iterable[str]) -> str:
    """The binding of an answer: the bundles' sha256, sorted, comma-separated."""
    return ",".join(sorted(set(sha256s)))


@dataclass(frozen=True)
class SignedConsent:
    """An owner's answer for one campaign and one exact set of images."""

    campaign_id: int
    images: str
    answer: RemoteAnswer
    at: str

    def to_json(self) -> dict[str, Any]:
        return {"campaign_id": self.campaign_id, "images": self.images, "answer": self.answer, "at": self.at}

    @classmethod
    def from_json(cls, body: object) -> SignedConsent:
        """Parse the signed field; ValueError names what is malformed."""
        if not isinstance(body, Mapping):
            raise ValueError("consent is not an object")
        campaign_id, images, answer, at = (body.get(k) for k in ("campaign_id", "images", "answer", "at"))
        if not isinstance(campaign_id, int) or isinstance(campaign_id, bool) or campaign_id < 1:
            raise ValueError("consent campaign_id is not a positive integer")
        if not isinstance(images, str) or not images or len(images) > _MAX_KEY:
            raise ValueError("consent images is not a list of hashes")
        if answer not in REMOTE_ANSWERS:
            raise ValueError(f"consent answer {answer!r} is not accept or decline")
        if not isinstance(at, str):
            raise ValueError("consent at is not a time")
        try:
            datetime.fromisoformat(at)
        except ValueError as exc:
            raise ValueError(f"consent at {at!r} is not ISO 8601") from exc
        return cls(campaign_id, images, answer, at)
