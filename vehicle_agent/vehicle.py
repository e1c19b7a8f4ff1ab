"""What the car itself says about its readiness: parked, ignition, battery, network.

The agent checks a campaign's preconditions against a :class:`VehicleState` before it
starts (and the network again once the signed bundle size is known). Sources:

* :class:`FakeVehicle`: settable, signals each change; tests and the simulator.
* :class:`FileVehicleState`: a Raspberry Pi reads a small JSON file that another
  service (a CAN bus reader, a power manager) keeps up to date. A missing, unreadable
  or stale file reads as *not ready* (not parked, ignition on, battery 0, cellular),
  so an unknown car defers instead of installing.
* :class:`AlwaysReady`: no vehicle bus at all (a bench Pi, the default when nothing is
  configured); the agent logs a warning once that preconditions are assumed met.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from firmware_bundles.messages import Network
from vehicle_agent.config import VehicleOptions

log = logging.getLogger(__name__)

Listener = Callable[[], None]


@dataclass(frozen=True)
class Reading:
    """One consistent view of the car."""

    parked: bool = True
    ignition_off: bool = True
    battery_percent: int = 100
    network: Network = Network.WIFI


# What an unknown car is taken to be: nothing that lets an install start.
NOT_READY = Reading(parked=False, ignition_off=False, battery_percent=0, network=Network.CELLULAR)


class VehicleState(Protocol):
    def read(self) -> Reading:
        """The car now; never raises (a source that cannot tell answers :data:`NOT_READY`)."""
        ...

    def watch(self, listener: Listener) -> None:
        """Call ``listener`` (from any thread) whenever the state changes; a source that
        cannot tell does nothing, and the agent re-checks on its retry interval instead."""
        ...


class AlwaysReady:
    """No vehicle bus: every precondition is taken as met (warned once)."""

    def __init__(self, reading: Reading = Reading(network=Network.ETHERNET)) -> None:
        self._reading = reading
        self._warned = False

    def read(self) -> Reading:
        if not self._warned:
            log.warning("no vehicle state source configured: preconditions are assumed met")
            self._warned = True
        return self._reading

    def watch(self, listener: Listener) -> None:
        return None


class FakeVehicle:
    """A settable car; :meth:`set` notifies the listeners, as a real bus signal would."""

    def __init__(self, reading: Reading = Reading()) -> None:
        self._reading = reading
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def read(self) -> Reading:
        return self._reading

    def watch(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def set(self, **changes: Any) -> None:
        self._reading = replace(self._reading, **changes)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()


class FileVehicleState:
    """Reads ``{"parked": true, "ignition_off": true, "battery_percent": 80, "network": "wifi"}``.

    The file must have been written within ``max_age`` seconds (by its mtime), so a
    crashed writer cannot leave a car "parked" forever. Every field is required.
    """

    def __init__(self, path: Path, *, max_age: float = 120.0, now: Callable[[], float] = time.time) -> None:
        self._path = path
        self._max_age = max_age
        self._now = now

    def read(self) -> Reading:
        try:
            age = self._now() - self._path.stat().st_mtime
            if age > self._max_age:
                raise ValueError(f"stale: written {age:.0f} s ago (max {self._max_age:g} s)")
            return _reading(json.loads(self._path.read_bytes()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("vehicle state %s unusable (%s): taking the car as not ready", self._path, exc)
            return NOT_READY

    def watch(self, listener: Listener) -> None:
        return None


def _reading(body: dict[str, Any]) -> Reading:
    parked, ignition_off, battery = body["parked"], body["ignition_off"], body["battery_percent"]
    if not isinstance(parked, bool) or not isinstance(ignition_off, bool):
        raise TypeError("parked and ignition_off must be booleans")
    if isinstance(battery, bool) or not isinstance(battery, int | float) or not 0 <= battery <= 100:
        raise ValueError(f"battery_percent must be 0..100, got {battery!r}")
    return Reading(parked, ignition_off, int(battery), Network(body["network"]))


def vehicle_state(options: VehicleOptions) -> VehicleState:
    """The configured readiness source: a state file, or none (preconditions assumed met)."""
    if options.state_file is None:
        return AlwaysReady()
    return FileVehicleState(options.state_file, max_age=options.max_age)
