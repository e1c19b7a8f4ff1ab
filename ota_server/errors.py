"""The server's one error family.

Services raise these and know nothing of HTTP; ``ota_server.api.handlers`` maps
each class to a status code in one place.
"""

from __future__ import annotations


class OtaError(Exception):
    """Base of every error the server raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(OtaError):
    """The thing asked for does not exist."""


class Conflict(OtaError):
    """The request clashes with what is already stored (duplicate, already launched)."""


class InvalidInput(OtaError):
    """The request is well-formed but its content breaks a rule (bad VIN, bad bundle)."""


class TooLarge(InvalidInput):
    """An upload is bigger than the configured cap."""


class NotReady(OtaError):
    """A dependency (broker, signing keys) is not available yet; the caller may retry."""


class Unavailable(NotReady):
    """A dependency that was there is down for now (the database): ask again in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(OtaError):
    """No API token, or one the server does not know (or has revoked)."""


class Forbidden(OtaError):
    """The token is valid but its role (or its person) may not do this."""


class RateLimited(OtaError):
    """Too many requests for this token; ``retry_after`` seconds until the next one is allowed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
