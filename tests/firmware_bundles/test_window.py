"""The signed maintenance window: inside or not, the next opening, in the car's local time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from firmware_bundles.window import InstallWindow, hold_detail, parse_hold

BERLIN = ZoneInfo("Europe/Berlin")
NIGHTS = InstallWindow.from_json(
    {"time_zone": "Europe/Berlin", "windows": [{"days": [0, 1, 2, 3, 4], "start": "23:00", "end": "02:00"}]}
)


def berlin(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        (berlin(2026, 12, 7, 23, 30), True),  # Monday evening
        (berlin(2026, 12, 8, 1, 59), True),  # Tuesday morning, after Monday's opening
        (berlin(2026, 12, 8, 2, 0), False),  # closed at 02:00
        (berlin(2026, 12, 12, 23, 30), False),  # Saturday evening: not a listed day
        (berlin(2026, 12, 12, 1, 0), True),  # Saturday morning: Friday's window
        (berlin(2026, 12, 13, 1, 0), False),  # Sunday morning: Saturday had none
    ],
)
def test_inside_a_window_that_crosses_midnight(at: datetime, inside: bool) -> None:
    assert NIGHTS.inside(at) is inside
    assert NIGHTS.inside(at.astimezone(UTC)) is inside  # the instant counts, not its offset


def test_the_next_opening_skips_days_without_a_window() -> None:
    assert NIGHTS.next_start(berlin(2026, 12, 12, 10, 0)) == berlin(2026, 12, 14, 23, 0)  # Saturday -> Monday
    assert NIGHTS.next_start(berlin(2026, 12, 7, 23, 30)) == berlin(2026, 12, 8, 23, 0)  # already open: the next


def test_the_next_opening_is_local_across_a_dst_change() -> None:
    every_day = InstallWindow.from_json(
        {"time_zone": "Europe/Berlin", "windows": [{"days": list(range(7)), "start": "03:00", "end": "04:00"}]}
    )
    opening = every_day.next_start(datetime(2026, 10, 24, 12, 0, tzinfo=UTC))  # clocks go back on the 25th
    assert opening.astimezone(BERLIN).hour == 3 and opening.utcoffset() == berlin(2026, 10, 25, 3, 0).utcoffset()


def test_the_deferral_detail_round_trips() -> None:
    now = berlin(2026, 12, 12, 10, 0)
    held = parse_hold(hold_detail(NIGHTS, now))
    assert held is not None
    assert held.next_try_at == berlin(2026, 12, 14, 23, 0)
    assert held.window == "23:00-02:00 Mon,Tue,Wed,Thu,Fri (Europe/Berlin)"
    assert parse_hold("not_parked: the vehicle is not parked") is None
    assert parse_hold("outside_window: window=x; next_try_at=yesterday") is None


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"time_zone": "Mars/Olympus_Mons", "windows": [{"days": [0], "start": "01:00", "end": "02:00"}]},
        {"time_zone": "UTC", "windows": []},
        {"time_zone": "UTC", "windows": [{"days": [7], "start": "01:00", "end": "02:00"}]},
        {"time_zone": "UTC", "windows": [{"days": [True], "start": "01:00", "end": "02:00"}]},
        {"time_zone": "UTC", "windows": [{"days": [0], "start": "01:00", "end": "01:00"}]},
        {"time_zone": "UTC", "windows": [{"days": [0], "start": "25:00", "end": "01:00"}]},
        {"time_zone": "UTC", "windows": [{"days": [0], "start": "01:00+02:00", "end": "03:00"}]},
    ],
)
def test_a_malformed_window_is_refused(body: object) -> None:
    with pytest.raises(ValueError, match="maintenance_window"):
        InstallWindow.from_json(body)
