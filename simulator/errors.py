"""One error family for the simulator."""

from __future__ import annotations


class SimulatorError(Exception):
    """Base of the simulator's errors."""


class ServerError(SimulatorError):
    """The server refused a request or could not be reached; the message says which and why."""


class ServerUnavailable(ServerError):
    """The server could not be reached or answered 5xx (restarting, its database down): worth asking again."""


class ScenarioTimeout(SimulatorError):
    """The campaign did not finish within the allowed time."""
