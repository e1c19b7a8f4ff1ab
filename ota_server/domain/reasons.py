"""Every reason code the service stores, in plain words (pure; one source for the API rows, CSV, pages and CLI).

A car's ``reason`` in a campaign is one of: a failure code the car reported
(``firmware_bundles.messages.FailureReason``), ``timed_out`` (the scheduler), an unreachable
reason an operator recorded (``UnreachableReason``; a decommissioned car's reason is one of the
same words), ``already_remedied`` (its manifest showed the fix at launch), or an operator outcome.
A deferred car's code is the first word of its report's ``detail`` (``<code>: <text>``, see
``vehicle_agent.gate``): :func:`deferral_code` reads it and ``DEFERRALS`` says it in words.
Wherever a code is shown it is shown as :func:`said`: the plain words with the code beside them.
The regulator's status words are ``ota_server.regulator.wording``; these are the operator's.
"""

from __future__ import annotations

from firmware_bundles.messages import FailureReason
from ota_server.domain.states import UnreachableReason, VinState

F = FailureReason
FAILURES: dict[FailureReason, str] = {
    F.METADATA_FETCH_FAILED: "could not fetch the signed update metadata",
    F.METADATA_SIGNATURE_INVALID: "the update metadata's signature did not check out",
    F.METADATA_EXPIRED: "the update metadata had expired",
    F.METADATA_ROLLBACK: "the update metadata was older than what the car had seen (rollback attempt)",
    F.METADATA_INVALID: "the update metadata was malformed",
    F.NO_DIRECTOR_ASSIGNMENT: "the server had not assigned an image to the car",
    F.NOT_FOR_THIS_VEHICLE: "the assignment named another car",
    F.UNKNOWN_ECU: "the assignment named an ECU the car does not have",
    F.TARGET_NOT_IN_IMAGE_REPO: "the assigned image is not in the image repository",
    F.TARGET_MISMATCH: "the assignment and the image repository disagree about the image",
    F.HARDWARE_MISMATCH: "the image is for other hardware",
    F.BELOW_MINIMUM_VERSION: "the image is older than the minimum version the car accepts",
    F.DOWNLOAD_FAILED: "the download failed",
    F.DOWNLOAD_TOO_SLOW: "the download was too slow",
    F.INSUFFICIENT_STORAGE: "not enough storage for the update",
    F.LENGTH_MISMATCH: "the download had the wrong length",
    F.HASH_MISMATCH: "the download did not match its hash",
    F.BUNDLE_INVALID: "the update bundle was malformed",
    F.INSTALL_FAILED: "writing the update failed",
    F.BOOT_FAILED: "the new software did not boot; the previous software runs again",
    F.HEALTH_CHECK_FAILED: "the new software failed its health check; the previous software runs again",
    F.INTERNAL_ERROR: "the car's update agent had an internal error",
}

U = UnreachableReason
UNREACHABLE: dict[UnreachableReason, str] = {
    U.EXPORTED: "the car was exported",
    U.STOLEN: "the car was stolen",
    U.SCRAPPED: "the car was scrapped",
    U.OTHER: "another reason (see the evidence)",
}

# What holds a deferred car, by the code its agent sends (vehicle_agent.gate.Blocker).
DEFERRALS: dict[str, str] = {
    "not_parked": "the car is not parked",
    "ignition_on": "the ignition is on",
    "battery_low": "the battery is too low",
    "network_not_allowed": "the car's network is not allowed for a bundle this large",
    "owner_postponed": "the owner postponed the update",
    "consent_outdated": "the update changed since the owner accepted it; the owner is asked again",
    "outside_window": "outside the car's maintenance window",
    "metadata_expired": "the signed update metadata had expired; the car fetches it again",
}

OTHERS: dict[str, str] = {
    "timed_out": "no report within the time the campaign allows",
    "already_remedied": "the car already ran the fix when the campaign was launched",
    VinState.REMEDIED_AT_DEALER.value: "remedied at a dealer",
    VinState.INSPECTED_NOT_NEEDED.value: "inspected: the remedy was not needed",
}

PLAIN: dict[str, str] = {
    **{code.value: text for code, text in FAILURES.items()},
    **{code.value: text for code, text in UNREACHABLE.items()},
    **OTHERS,
    **DEFERRALS,
}


def plain_words(code: str | None) -> str | None:
    """The code in plain words; an unknown code is said as it is (never lost), None stays None."""
    if code is None:
        return None
    return PLAIN.get(code, code.replace("_", " "))


def said(code: str | None) -> str | None:
    """A code as every page, row and CLI line shows it: ``the download failed (download_failed)``."""
    words = plain_words(code)
    return f"{words} ({code})" if words and words != code else code


def deferral_code(detail: str | None) -> str | None:
    """A deferred car's code: what its report's ``detail`` says before the first ':' (None without one)."""
    if not detail or ":" not in detail:
        return None
    return detail.split(":", 1)[0].strip() or None


def reason_code(state: str, code: str | None, detail: str | None) -> str | None:
    """A car's reason code: the stored one, or a deferred car's from its detail."""
    if code is None and state == VinState.DEFERRED.value:
        return deferral_code(detail)
    return code


def reason_text(state: str, code: str | None, detail: str | None) -> str | None:
    """What a row of a campaign's cars says about why: the code's words (a deferred car's code is in its
    detail; a deferral without a code says its own words)."""
    found = reason_code(state, code, detail)
    if found is None and state == VinState.DEFERRED.value:
        return detail or None
    return plain_words(found)
