"""One error family for the agent, split by what the agent does about it.

* :class:`TransientError`: the network or the broker let us down; retry later,
  nothing is reported as failed.
* :class:`UpdateFailed`: this update cannot succeed as offered; report ``failed``
  with a precise :class:`~firmware_bundles.messages.FailureReason` and keep running
  the old software.
* :class:`ConfigError`: the agent cannot start; raised only at the entry point.
"""

from __future__ import annotations

from firmware_bundles.messages import FailureReason


class AgentError(Exception):
    """Base of every error raised by ``vehicle_agent``."""


class ConfigError(AgentError):
    """The configuration file, the trusted roots or the agent-config document are unusable."""


class TransientError(AgentError):
    """A failure worth retrying (network, broker)."""


class FetchError(TransientError):
    """An HTTP fetch failed; ``status`` is the HTTP status code when the server answered."""

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.status = status


class LinkDown(TransientError):
    """The MQTT link is not connected; the report stays in the outbox."""


class UpdateFailed(AgentError):
    """The update is refused or failed; ``reason`` goes to the server verbatim.

    ``transient``: the server could not be reached or said "not now" (a 5xx, 408, 429, no
    connection): the agent asks again for a while before it reports this failure.
    ``ecu_serial``: the ECU that failed, when one did (the report names it in its ecu_serial).
    ``kept``: the other ECUs kept the fix (the recall's keep_successful policy): the car is
    failed, not rolled back, as only the failing ECU went back to its old image.
    """

    def __init__(
        self, reason: FailureReason, detail: str, *, transient: bool = False, ecu_serial: str | None = None
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail[:1000]
        self.transient = transient
        self.ecu_serial = ecu_serial
        self.kept = False


def transient_status(status: int | None) -> bool:
    """An answer worth asking again: none at all (a connection error), a server error, 408 or 429."""
    return status is None or status >= 500 or status in (408, 429)
