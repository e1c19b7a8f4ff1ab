"""Before a campaign starts: preconditions, deferrals, the owner's notices and consent.

Simulated time: the gate's sleep is a script of vehicle changes (:class:`Pauses`), and
a car still waiting after the script ends is a test failure, not a hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable

import pytest

from firmware_bundles import repo_paths
from firmware_bundles.messages import (
    CampaignNotice,
    Contact,
    Network,
    OwnerNotice,
    Preconditions,
    ReportState,
    StatusReport,
)
from vehicle_agent.gate import Blocker, NoticeReader, check, stored
from vehicle_agent.journal import CampaignRecord
from vehicle_agent.owner import Consent, ScriptedOwner
from vehicle_agent.vehicle import FakeVehicle, Reading

from .conftest import Car
from .fakes import REPO, SERIAL, FakeServer

S = ReportState
INSTALL = [S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING, S.REMEDIED]
READY = {"parked": True, "ignition_off": True, "battery_percent": 100, "network": Network.WIFI}


class StillWaiting(AssertionError):
    pass


class Pauses:
    """The gate's sleep: records each delay and makes the next scripted change to the car."""

    def __init__(self, *changes: Callable[[], None]) -> None:
        self.delays: list[float] = []
        self._changes = list(changes)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if not self._changes:
            raise StillWaiting(f"still waiting after {len(self.delays) - 1} scripted pauses")
        self._changes.pop(0)()


def nothing() -> None:
    return None


def owner_notice(*, safety: bool = True) -> OwnerNotice:
    return OwnerNotice(
        purpose="Limit charging current when a cell overheats",
        safety_recall=safety,
        expected_minutes=25,
        unavailable_functions=("driving", "charging"),
        contact=Contact(name="Recall desk", phone="+1 555 0100"),
    )


def feature_notice(server: FakeServer, campaign_id: int = 1) -> CampaignNotice:
    return server.notice(
        campaign_id, safety_recall=False, requires_consent=True, owner_notice=owner_notice(safety=False)
    )


def progress_keys(reports: list[StatusReport]) -> list[tuple[int, int, int]]:
    return [r.progress for r in reports]


def strictly_increasing(keys: list[tuple[int, int, int]]) -> bool:
    return all(a < b for a, b in itertools.pairwise(keys))


@pytest.fixture(autouse=True)
def released(server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})


# -- preconditions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reading", "blocker"),
    [
        (Reading(parked=False), Blocker.NOT_PARKED),
        (Reading(ignition_off=False), Blocker.IGNITION_ON),
        (Reading(battery_percent=39), Blocker.BATTERY_LOW),  # 30% plus the 10% rollback reserve
    ],
)
async def test_each_unmet_precondition_defers_and_installs_nothing(
    car: Car, server: FakeServer, reading: Reading, blocker: Blocker
) -> None:
    vehicle = FakeVehicle(reading)
    seen_while_deferred: list[list[ReportState]] = []

    def while_deferred() -> None:
        seen_while_deferred.append(car.states)
        car.assert_untouched()
        assert not any(u.startswith(repo_paths.targets_url(REPO)) for u in server.transport.requests)
        vehicle.set(**READY)

    pauses = Pauses(while_deferred)
    car.build(vehicle=vehicle, sleep=pauses)

    assert await car.agent.handle(server.notice(preconditions=Preconditions())) is S.REMEDIED

    assert seen_while_deferred == [[S.NOTIFIED, S.DEFERRED]]
    assert car.states == [S.NOTIFIED, S.DEFERRED, *INSTALL]
    deferred = car.link.reports[1]
    assert deferred.detail.startswith(f"{blocker.value}: ")
    assert [r.deferrals for r in car.link.reports] == [0, 1, 1, 1, 1, 1, 1]
    assert strictly_increasing(progress_keys(car.link.reports))
    assert car.running_version() == "2.0"


async def test_deferrals_count_up_per_new_reason_and_a_same_reason_recheck_is_silent(
    car: Car, server: FakeServer
) -> None:
    vehicle = FakeVehicle(Reading(parked=False, ignition_off=False))
    pauses = Pauses(
        nothing,  # still not parked: no new report
        lambda: vehicle.set(parked=True),  # parked, but the ignition is on: a new deferral
        lambda: vehicle.set(ignition_off=True),
    )
    car.build(vehicle=vehicle, sleep=pauses)

    assert await car.agent.handle(server.notice()) is S.REMEDIED  # no preconditions sent: the defaults apply

    assert car.states == [S.NOTIFIED, S.DEFERRED, S.DEFERRED, *INSTALL]
    assert [r.detail.split(":")[0] for r in car.link.reports[1:3]] == ["not_parked", "ignition_on"]
    assert [r.deferrals for r in car.link.reports] == [0, 1, 2, 2, 2, 2, 2, 2]
    assert car.link.reports[3].detail == ""  # the deferral's reason does not stick to later steps
    assert strictly_increasing(progress_keys(car.link.reports))
    assert len(pauses.delays) == 3


async def test_the_retry_interval_is_jittered_around_the_configured_value(car: Car, server: FakeServer) -> None:
    vehicle = FakeVehicle(Reading(parked=False))
    pauses = Pauses(nothing, nothing, nothing, lambda: vehicle.set(parked=True))
    car.build(vehicle=vehicle, sleep=pauses)
    await car.agent.handle(server.notice())
    options = car.agent.config.vehicle
    low, high = options.retry_interval * (1 - options.retry_jitter), options.retry_interval * (1 + options.retry_jitter)
    assert all(low <= d <= high for d in pauses.delays)
    assert len(set(pauses.delays)) > 1


async def test_a_large_bundle_over_cellular_defers_once_its_signed_size_is_known(car: Car, server: FakeServer) -> None:
    vehicle = FakeVehicle(Reading(network=Network.CELLULAR))

    def on_wifi() -> None:
        assert not any(u.startswith(repo_paths.targets_url(REPO)) for u in server.transport.requests)
        car.assert_untouched()
        vehicle.set(network=Network.WIFI)

    car.build(vehicle=vehicle, sleep=Pauses(on_wifi))
    notice = server.notice(preconditions=Preconditions(large_bundle_bytes=1000))

    assert await car.agent.handle(notice) is S.REMEDIED

    assert car.states == [S.NOTIFIED, S.DOWNLOADING, S.DEFERRED, *INSTALL]
    deferred = car.link.reports[2]
    assert deferred.detail.startswith("network_not_allowed: ") and "cellular" in deferred.detail
    assert strictly_increasing(progress_keys(car.link.reports))


async def test_a_small_bundle_downloads_over_cellular(car: Car, server: FakeServer) -> None:
    car.build(vehicle=FakeVehicle(Reading(network=Network.CELLULAR)), sleep=Pauses())
    assert await car.agent.handle(server.notice(preconditions=Preconditions())) is S.REMEDIED
    assert car.states == [S.NOTIFIED, *INSTALL]


async def test_a_vehicle_state_change_ends_the_wait_at_once(car: Car, server: FakeServer) -> None:
    vehicle = FakeVehicle(Reading(parked=False))

    async def forever(_seconds: float) -> None:
        await asyncio.get_running_loop().create_future()

    car.build(vehicle=vehicle, sleep=forever)
    task = asyncio.ensure_future(car.agent.handle(server.notice()))
    await until(lambda: S.DEFERRED in car.states)

    vehicle.set(parked=True)

    assert await asyncio.wait_for(task, timeout=60) is S.REMEDIED  # a hang guard, not a timing check
    assert car.states == [S.NOTIFIED, S.DEFERRED, *INSTALL]


async def test_a_deferred_campaign_survives_a_restart_and_shows_its_notice_once(car: Car, server: FakeServer) -> None:
    class PowerOff(BaseException):
        pass

    async def power_off(_seconds: float) -> None:
        raise PowerOff

    first = ScriptedOwner()
    car.build(vehicle=FakeVehicle(Reading(parked=False)), sleep=power_off, owner=first)
    with pytest.raises(PowerOff):
        await car.agent.handle(server.notice(owner_notice=owner_notice()))
    assert [what for what, _, _ in first.shown] == ["notice"]

    second = ScriptedOwner()
    car.build(vehicle=FakeVehicle(), sleep=Pauses(nothing), owner=second)
    assert await car.agent.resume() == [S.REMEDIED]

    assert [what for what, _, _ in second.shown] == ["result"]
    assert car.states[-1] is S.REMEDIED and car.link.reports[-1].deferrals == 1


def test_the_battery_needs_the_minimum_plus_the_rollback_reserve() -> None:
    pre = Preconditions(min_battery_percent=30, rollback_reserve_percent=15)
    assert check(pre, Reading(battery_percent=45)) is None
    hold = check(pre, Reading(battery_percent=44))
    assert hold is not None and hold.blocker is Blocker.BATTERY_LOW and "15%" in hold.detail
    assert check(None, Reading(parked=False, battery_percent=0)) is None  # nothing declared, nothing known


# -- the owner ----------------------------------------------------------------------


class OrderedOwner(ScriptedOwner):
    """Also records what the server had been told when each notice was shown."""

    def __init__(self, car: Car, answers: tuple[Consent, ...] = (Consent.ACCEPT,)) -> None:
        super().__init__(answers)
        self.car = car
        self.states_when_shown: list[list[ReportState]] = []

    async def show_notice(self, notice: CampaignNotice) -> None:
        self.states_when_shown.append(self.car.states)
        await super().show_notice(notice)

    async def show_result(self, notice: CampaignNotice, state: ReportState, detail: str) -> None:
        self.states_when_shown.append(self.car.states)
        await super().show_result(notice, state, detail)


async def test_consent_accepted_reports_consented_then_installs(car: Car, server: FakeServer) -> None:
    owner = OrderedOwner(car)
    car.build(owner=owner)

    assert await car.agent.handle(feature_notice(server)) is S.REMEDIED

    assert car.states == [S.NOTIFIED, S.CONSENTED, *INSTALL]
    assert [(what, text) for what, _, text in owner.shown][1:] == [("consent", "accept"), ("result", "remedied")]
    assert "Recall desk" in owner.shown[0][2]
    log = car.agent.journal.data.campaigns[1].owner_log
    assert [(e.what, e.attempt) for e in log] == [("notice", 1), ("consent", 1), ("result", 1)]


async def test_consent_declined_is_terminal_and_installs_nothing(car: Car, server: FakeServer) -> None:
    owner = ScriptedOwner([Consent.DECLINE])
    car.build(owner=owner)
    notice = feature_notice(server)

    assert await car.agent.handle(notice) is S.DECLINED

    assert car.states == [S.NOTIFIED, S.DECLINED]
    car.assert_untouched()
    assert [what for what, _, _ in owner.shown] == ["notice", "consent"]  # no result for a no
    assert await car.agent.handle(notice) is S.DECLINED  # a repeated notice only re-sends it
    assert owner.asked == 1


async def test_consent_postponed_defers_and_asks_again_later(car: Car, server: FakeServer) -> None:
    owner = ScriptedOwner([Consent.POSTPONE, Consent.ACCEPT])
    pauses = Pauses(nothing)
    car.build(owner=owner, sleep=pauses)

    assert await car.agent.handle(feature_notice(server)) is S.REMEDIED

    assert car.states == [S.NOTIFIED, S.DEFERRED, S.CONSENTED, *INSTALL]
    assert car.link.reports[1].detail.startswith("owner_postponed: ")
    assert owner.asked == 2 and len(pauses.delays) == 1
    assert strictly_increasing(progress_keys(car.link.reports))


async def test_a_headless_car_postpones_without_logging_every_ask(car: Car, server: FakeServer) -> None:
    owner = ScriptedOwner([Consent.POSTPONE, Consent.POSTPONE, Consent.POSTPONE, Consent.ACCEPT])
    car.build(owner=owner, sleep=Pauses(nothing, nothing, nothing))
    await car.agent.handle(feature_notice(server))
    assert car.states == [S.NOTIFIED, S.DEFERRED, S.CONSENTED, *INSTALL]  # one deferral, not one per ask
    log = car.agent.journal.data.campaigns[1].owner_log
    assert [(e.what, e.text) for e in log if e.what == "consent"] == [("consent", "postpone"), ("consent", "accept")]


async def test_a_safety_recall_never_waits_for_consent_but_shows_its_notices(car: Car, server: FakeServer) -> None:
    owner = OrderedOwner(car, answers=(Consent.DECLINE,))
    car.build(owner=owner)

    notice = server.notice(requires_consent=True, owner_notice=owner_notice())  # safety_recall defaults to True
    assert await car.agent.handle(notice) is S.REMEDIED

    assert owner.asked == 0
    assert car.states == [S.NOTIFIED, *INSTALL]
    assert owner.states_when_shown == [[S.NOTIFIED], [S.NOTIFIED, *INSTALL]]  # before it starts, after it ends
    assert "safety recall 24V-123" in owner.shown[0][2]


async def test_a_failed_update_tells_the_owner(car: Car, server: FakeServer) -> None:
    from vehicle_agent.installer import SlotBackend

    class Unhealthy:
        def check(self, slots: SlotBackend, expected: object) -> str | None:
            return "brake controller silent"

    owner = ScriptedOwner()
    car.build(owner=owner, health=Unhealthy())
    assert await car.agent.handle(server.notice(owner_notice=owner_notice())) is S.ROLLED_BACK
    assert owner.shown[-1] == ("result", 1, "rolled_back")


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds.

    The agent hands blocking steps to ``asyncio.to_thread``, so a bound counted in bare
    loop turns ran out before a busy machine's worker thread finished (the test then failed
    though the agent was right). Each turn also gives threads a moment; the bound (~60 s)
    is a hang guard only, nothing is timed.
    """
    for turn in range(60_000):
        if condition():
            return
        await asyncio.sleep(0 if turn < 100 else 0.001)
    raise AssertionError("condition never held")


def test_an_attempts_notice_is_parsed_once_for_all_its_steps(server: FakeServer) -> None:
    first, second = server.notice(1), server.notice(2)
    reader = NoticeReader()
    notified = CampaignRecord(1, first.nonce, ReportState.NOTIFIED, notice=stored(first))

    parsed = reader.of(notified)
    assert parsed == first.model_copy(update={"director_metadata": None, "image_metadata": None})
    assert reader.of(dataclasses.replace(notified, state=ReportState.DOWNLOADING)) is parsed  # not parsed again

    again = reader.of(CampaignRecord(2, second.nonce, ReportState.NOTIFIED, notice=stored(second)))
    assert again is not None and again.campaign_id == 2
    assert reader.of(CampaignRecord(3, "n", ReportState.NOTIFIED)) is None  # a journal from before notices were kept
    assert reader.of(CampaignRecord(3, "n", ReportState.NOTIFIED, notice="{torn")) is None
