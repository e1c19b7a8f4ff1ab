"""One error family for the contract package."""

from __future__ import annotations


class ContractError(Exception):
    """Base of every error raised by ``firmware_bundles``."""


class InvalidVin(ContractError):
    """A VIN that is not valid under ISO 3779 (or fails its check digit)."""


class MalformedMessage(ContractError):
    """A wire message that cannot be parsed or does not fit the schema."""


class InvalidBundle(ContractError):
    """A bundle whose structure or manifest is not what the format says."""


class TargetMismatch(ContractError):
    """Director and Image repository do not agree, or a target is not for this car.

    ``reason`` is a :class:`firmware_bundles.messages.FailureReason` value so the
    agent can report it to the server verbatim.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class UnverifiedReport(ContractError):
    """A status report without a signature, or whose signature does not verify."""
