"""The regulator's words for where a car stands: remedied, not remedied, unreachable or removed, with a reason.

The weekly VIN feed and the completion report speak these words, never the service's internal
state names (``pending``, ``rolled_back``...), so a regulator reads them without a glossary.
Every internal state maps to exactly one status; the reason says which case it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from ota_server.domain.states import VinState

REMEDIED = "remedied"
NOT_REMEDIED = "not remedied"
UNREACHABLE = "unreachable"
REMOVED = "removed"
STATUSES = (REMEDIED, NOT_REMEDIED, UNREACHABLE, REMOVED)

S = VinState
_WORDING: dict[VinState, tuple[str, str]] = {
    S.REMEDIED: (REMEDIED, "over the air"),
    S.REMEDIED_AT_DEALER: (REMEDIED, "at a dealer"),
    S.INSPECTED_NOT_NEEDED: (REMOVED, "inspected: remedy not needed"),
    S.WITHDRAWN: (REMOVED, "recall withdrawn before the update started"),
    S.UNREACHABLE: (UNREACHABLE, "other"),
    S.PENDING: (NOT_REMEDIED, "owner not yet notified"),
    S.NOTIFIED: (NOT_REMEDIED, "owner notified, update not yet started"),
    S.DEFERRED: (NOT_REMEDIED, "owner notified, update postponed"),
    S.CONSENTED: (NOT_REMEDIED, "owner consented, update not yet started"),
    S.DOWNLOADING: (NOT_REMEDIED, "update in progress"),
    S.VERIFYING: (NOT_REMEDIED, "update in progress"),
    S.INSTALLING: (NOT_REMEDIED, "update in progress"),
    S.REBOOTING: (NOT_REMEDIED, "update in progress"),
    S.FAILED: (NOT_REMEDIED, "update failed, awaiting a retry or a dealer visit"),
    S.ROLLED_BACK: (NOT_REMEDIED, "update failed, previous software restored; awaiting a retry or a dealer visit"),
    S.TIMED_OUT: (NOT_REMEDIED, "update did not finish in time; awaiting a retry or a dealer visit"),
    S.DECLINED: (NOT_REMEDIED, "owner declined the update"),
}
REMOVED_REASONS = tuple(reason for status, reason in _WORDING.values() if status == REMOVED)
_UNREACHABLE_REASONS = {"exported": "exported", "stolen": "stolen", "scrapped": "scrapped", "other": "other"}


@dataclass(frozen=True)
class Wording:
    status: str  # one of STATUSES
    reason: str


def regulator_wording(state: str, reason: str | None) -> Wording:
    """A car's internal state (and its stored reason) in the regulator's words."""
    try:
        status, text = _WORDING[VinState(state)]
    except ValueError:
        return Wording(NOT_REMEDIED, "status unknown")
    if status == UNREACHABLE:
        text = _UNREACHABLE_REASONS.get(reason or "", "other")
    return Wording(status, text)
