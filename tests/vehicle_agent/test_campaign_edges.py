"""The campaign's edges on the car: the signed maintenance window, and metadata that lapsed while away.

Real agents over the in-memory repositories, in simulated time: the agent's clock is the
simulated monotonic time added to a fixed instant, so a sleep until the window opens moves
the car's clock there at once. A car still waiting after its scripted pauses is a failure,
not a hang.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from firmware_bundles.messages import FailureReason, ReportState
from firmware_bundles.window import parse_hold
from vehicle_agent.agent import Agent
from vehicle_agent.owner import Consent, ScriptedOwner

from .conftest import Car
from .fakes import HW, SERIAL, FakeServer

S = ReportState
NEW_YORK = ZoneInfo("America/New_York")
# 15:00 on a Friday afternoon in New York (UTC-5 in December)
AFTERNOON = datetime(2026, 12, 4, 20, 0, tzinfo=UTC)
NIGHTS = {
    "time_zone": "America/New_York",
    "windows": [{"days": [0, 1, 2, 3, 4, 5, 6], "start": "01:00", "end": "05:00"}],
}


class TooManyPauses(AssertionError):
    pass


def simulated_clock(car: Car, start: datetime) -> Any:
    return lambda: start + timedelta(seconds=car.time.now)


def build(car: Car, start: datetime, *, pauses: int = 50, **kwargs: Any) -> Agent:
    """The car with a clock that moves with its simulated sleeps (at most ``pauses`` of them)."""

    async def sleep(seconds: float) -> None:
        if len(car.time.slept) >= pauses:
            raise TooManyPauses(f"still waiting after {pauses} pauses")
        await car.time.sleep(seconds)

    kwargs.setdefault("sleep", sleep)
    return car.build(clock=simulated_clock(car, start), **kwargs)


def assign_with_window(server: FakeServer, version: str, counter: int, window: dict[str, Any] | None) -> None:
    server.assign({SERIAL: server.release(version, counter)}, maintenance_window=window)


# -- the maintenance window -----------------------------------------------------------------


async def test_a_car_outside_its_window_downloads_then_installs_only_once_the_window_opens(
    car: Car, server: FakeServer
) -> None:
    assign_with_window(server, "2.0", 2, NIGHTS)
    agent = build(car, AFTERNOON)

    assert await agent.handle(server.notice(1)) is S.REMEDIED, car.link.reports[-1].detail

    states = car.states
    deferred = next(r for r in car.link.reports if r.state is S.DEFERRED)
    hold = parse_hold(deferred.detail)
    assert hold is not None, deferred.detail
    assert hold.next_try_at == datetime(2026, 12, 5, 1, 0, tzinfo=NEW_YORK)
    assert "01:00-05:00 every day (America/New_York)" in hold.window
    # downloaded and checked in the afternoon, held before the slot is touched
    assert states[: states.index(S.DEFERRED)] == [S.NOTIFIED, S.DOWNLOADING, S.VERIFYING]
    installing = next(r for r in car.link.reports if r.state is S.INSTALLING)
    local = installing.sent_at.astimezone(NEW_YORK)
    assert installing.sent_at >= hold.next_try_at
    assert 1 <= local.hour < 5, f"installed at {local.isoformat()}, outside 01:00-05:00"
    assert car.running_version() == "2.0"


async def test_a_car_inside_its_window_installs_at_once(car: Car, server: FakeServer) -> None:
    assign_with_window(server, "2.0", 2, NIGHTS)
    agent = build(car, datetime(2026, 12, 5, 7, 30, tzinfo=UTC), pauses=0)  # 02:30 in New York

    assert await agent.handle(server.notice(1)) is S.REMEDIED
    assert S.DEFERRED not in car.states


async def test_the_window_holds_across_a_restart_and_a_vehicle_change(car: Car, server: FakeServer) -> None:
    """A car restarted while waiting for the window still waits for it: the signed window is journaled."""
    assign_with_window(server, "2.0", 2, NIGHTS)
    first = build(car, AFTERNOON, pauses=0)
    with pytest.raises(TooManyPauses):
        await first.handle(server.notice(1))
    assert car.agent.journal.data.campaigns[1].state is S.DEFERRED

    agent = build(car, AFTERNOON)
    agent.gate.poke()  # e.g. the car was parked: nothing moves before the window opens
    assert (await agent.resume()) == [S.REMEDIED]
    installing = next(r for r in car.link.reports if r.state is S.INSTALLING)
    assert 1 <= installing.sent_at.astimezone(NEW_YORK).hour < 5


async def test_a_malformed_signed_window_is_refused_not_read_as_any_hour(car: Car, server: FakeServer) -> None:
    assign_with_window(server, "2.0", 2, {"time_zone": "Mars/Olympus_Mons", "windows": []})
    agent = build(car, AFTERNOON, pauses=0)

    assert await agent.handle(server.notice(1)) is S.FAILED
    last = car.link.reports[-1]
    assert last.reason is FailureReason.METADATA_INVALID
    assert "maintenance_window" in last.detail
    car.assert_untouched()


# -- metadata that lapsed while the car was away -----------------------------------------------


def serve_expired(server: FakeServer, version: str, counter: int, car: Car) -> None:
    """Weeks pass: the repositories (and the car's cache) hold metadata past its expiry."""
    weeks_ago = server.now - timedelta(days=30)
    target = server.release(version, counter)
    metadata = car.state_dir / "metadata"
    expired = {
        metadata / "image": server.publish_image(now=weeks_ago),
        metadata / "director": server.assign({SERIAL: target}, now=weeks_ago),
    }
    for directory, files in expired.items():
        for name, data in files.items():
            (directory / name).write_bytes(data)


async def test_a_car_back_after_its_metadata_expired_fetches_fresh_metadata_and_is_remedied(
    car: Car, server: FakeServer
) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED
    serve_expired(server, "3.0", 3, car)

    async def sleep(seconds: float) -> None:
        await car.time.sleep(seconds)
        if len(car.time.slept) == 2:  # the server's re-signer catches up while the car backs off
            server.publish_image()
            server.assign({SERIAL: server.image_targets[f"bundles/{HW}/3.0.otab"]})

    agent = car.build(sleep=sleep)
    assert await agent.handle(server.notice(2)) is S.REMEDIED, car.link.reports[-1].detail

    reports = [r for r in car.link.reports if r.campaign_id == 2]
    stale = [r for r in reports if r.state is S.DEFERRED]
    assert len(stale) == 2
    assert all(r.detail.startswith("metadata_expired: ") and "fetching fresh metadata" in r.detail for r in stale)
    assert {r.attempt for r in reports} == {1}  # the same attempt: no new notice was needed
    assert car.time.slept[1] > car.time.slept[0]  # backing off
    assert car.running_version() == "3.0"


async def test_metadata_frozen_past_its_expiry_never_installs(car: Car, server: FakeServer) -> None:
    """An attacker (or a stuck mirror) keeps serving the expired metadata: the car asks again with a
    growing backoff, is refused by python-tuf each time, and after its patience fails for good."""
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED
    serve_expired(server, "3.0", 3, car)

    assert await car.agent.handle(server.notice(2)) is S.FAILED
    reports = [r for r in car.link.reports if r.campaign_id == 2]
    assert (reports[-1].state, reports[-1].reason) == (S.FAILED, FailureReason.METADATA_EXPIRED)
    assert sum(r.state is S.DEFERRED for r in reports) >= 3
    assert S.INSTALLING not in [r.state for r in reports]
    waits = car.time.slept
    assert waits == sorted(waits) or max(waits) <= car.agent.config.download.backoff_max * 1.2
    assert sum(waits) <= car.agent.config.download.outage_patience * 1.2
    assert car.running_version() == "2.0"
    assert car.slots.pending_try() is None


async def test_expired_metadata_found_while_asking_consent_is_fetched_again_too(car: Car, server: FakeServer) -> None:
    """A feature update verifies the metadata before asking the owner: expired there, the car asks
    for fresh metadata just the same instead of failing the campaign."""
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED
    serve_expired(server, "3.0", 3, car)

    async def sleep(seconds: float) -> None:
        await car.time.sleep(seconds)
        server.publish_image()
        server.assign({SERIAL: server.image_targets[f"bundles/{HW}/3.0.otab"]})

    agent = car.build(sleep=sleep, owner=ScriptedOwner([Consent.ACCEPT]))
    notice = server.notice(2, safety_recall=False, requires_consent=True)
    assert await agent.handle(notice) is S.REMEDIED, car.link.reports[-1].detail
    reports = [r for r in car.link.reports if r.campaign_id == 2]
    assert [r.state for r in reports][:2] == [S.NOTIFIED, S.DEFERRED]
    assert reports[1].detail.startswith("metadata_expired: ")
    assert car.running_version() == "3.0"
