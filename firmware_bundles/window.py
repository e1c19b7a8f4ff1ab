"""A car's maintenance window as the Director signs it: when, in the car's own local time, it may install.

The server's rollout plan names windows in each car's local time (``01:00``-``05:00``, some
weekdays); the Director signs the car's windows and its IANA time zone into the VIN's
targets metadata as the top-level field ``maintenance_window``::

    {"time_zone": "Europe/Berlin", "windows": [{"days": [0, 1, 2, 3, 4, 5, 6], "start": "01:00", "end": "05:00"}]}

A window whose ``start`` is after its ``end`` crosses midnight (the evening of a listed
day and the morning after). The car starts an install only inside one of them; outside,
it defers with a detail that both sides read (:func:`hold_detail`, :func:`parse_hold`):
``outside_window: window=<text>; next_try_at=<ISO 8601>``. Plain data, standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOW_FIELD = "maintenance_window"
OUTSIDE_WINDOW = "outside_window"  # the deferral code (vehicle_agent.gate.Blocker)
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MAX_WINDOWS = 20


@dataclass(frozen=True)
class LocalWindow:
    """Local ``start`` to ``end`` on ``days`` (0 = Monday .. 6 = Sunday)."""

    days: tuple[int, ...]
    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        clock, day = local.time().replace(tzinfo=None), local.weekday()
        if self.start <= self.end:
            return day in self.days and self.start <= clock < self.end
        return (day in self.days and clock >= self.start) or ((day - 1) % 7 in self.days and clock < self.end)

    def describe(self) -> str:
        days = "every day" if len(self.days) == 7 else ",".join(_DAY_NAMES[d] for d in self.days)
        return f"{self.start.strftime('%H:%M')}-{self.end.strftime('%H:%M')} {days}"


@dataclass(frozen=True)
class InstallWindow:
    """The car's windows in its IANA ``time_zone``."""

    time_zone: str
    windows: tuple[LocalWindow, ...]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def inside(self, now: datetime) -> bool:
        local = now.astimezone(self.zone)
        return any(w.contains(local) for w in self.windows)

    def next_start(self, now: datetime) -> datetime:
        """The first opening of a window after ``now``, in the car's local time (aware)."""
        local = now.astimezone(self.zone)
        openings = [
            opening
            for offset in range(8)
            for w in self.windows
            if (local.date() + timedelta(days=offset)).weekday() in w.days
            and (opening := datetime.combine(local.date() + timedelta(days=offset), w.start, tzinfo=self.zone)) > local
        ]
        return min(openings)  # every window has a day: one opens within the next 8 days

    def describe(self) -> str:
        return f"{'; '.join(w.describe() for w in self.windows)} ({self.time_zone})"

    def to_json(self) -> dict[str, Any]:
        return {
            "time_zone": self.time_zone,
            "windows": [
                {"days": list(w.days), "start": w.start.strftime("%H:%M"), "end": w.end.strftime("%H:%M")}
                for w in self.windows
            ],
        }

    @classmethod
    def from_json(cls, body: object) -> InstallWindow:
        """Parse the signed field; ValueError names what is malformed."""
        if not isinstance(body, Mapping):
            raise ValueError("maintenance_window is not an object")
        zone_name, windows = body.get("time_zone"), body.get("windows")
        if not isinstance(zone_name, str) or not zone_name:
            raise ValueError("maintenance_window time_zone is not a zone name")
        try:
            ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"maintenance_window time_zone {zone_name!r} is unknown") from exc
        if not isinstance(windows, list) or not 1 <= len(windows) <= _MAX_WINDOWS:
            raise ValueError(f"maintenance_window windows is not a list of 1 to {_MAX_WINDOWS}")
        return cls(zone_name, tuple(_window(w) for w in windows))

    @classmethod
    def of(cls, time_zone: str, windows: Sequence[tuple[Sequence[int], time, time]]) -> InstallWindow:
        """From the plan's windows (days, start, end) and the car's zone."""
        return cls.from_json(
            {
                "time_zone": time_zone,
                "windows": [
                    {"days": list(days), "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
                    for days, start, end in windows
                ],
            }
        )


def _window(body: object) -> LocalWindow:
    if not isinstance(body, Mapping):
        raise ValueError("maintenance_window window is not an object")
    days, start, end = body.get("days"), body.get("start"), body.get("end")
    if (
        not isinstance(days, list)
        or not days
        or any(not isinstance(d, int) or isinstance(d, bool) or not 0 <= d <= 6 for d in days)
    ):
        raise ValueError("maintenance_window days are not weekdays 0 (Monday) to 6 (Sunday)")
    try:
        opens, closes = time.fromisoformat(str(start)), time.fromisoformat(str(end))
    except ValueError as exc:
        raise ValueError(f"maintenance_window start {start!r} or end {end!r} is not HH:MM") from exc
    if opens.tzinfo is not None or closes.tzinfo is not None or opens == closes:
        raise ValueError("maintenance_window start and end are two different local times")
    return LocalWindow(tuple(sorted(set(days))), opens, closes)


def hold_text(window: InstallWindow, now: datetime) -> str:
    """What the car waits for outside the window: the window and its next opening."""
    return f"window={window.describe()}; next_try_at={window.next_start(now).isoformat()}"


def hold_detail(window: InstallWindow, now: datetime) -> str:
    """A deferred report's detail while outside the window (its code first, as every deferral)."""
    return f"{OUTSIDE_WINDOW}: {hold_text(window, now)}"


@dataclass(frozen=True)
class WindowHold:
    """What a deferred car's detail says it waits for: the window and when it tries next."""

    window: str
    next_try_at: datetime


def parse_hold(detail: str | None) -> WindowHold | None:
    """The window and next try of an ``outside_window`` deferral's detail (None for any other)."""
    if not detail or not detail.startswith(f"{OUTSIDE_WINDOW}: window="):
        return None
    body = detail[len(f"{OUTSIDE_WINDOW}: window=") :]
    window, sep, at = body.rpartition("; next_try_at=")
    if not sep:
        return None
    try:
        next_try_at = datetime.fromisoformat(at.strip())
    except ValueError:
        return None
    if next_try_at.tzinfo is None:
        return None
    return WindowHold(window, next_try_at)
