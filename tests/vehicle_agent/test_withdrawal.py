"""Withdrawals, rolled_back reports and retries with a new nonce."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from firmware_bundles.messages import CampaignNotice, FailureReason, ReportState, StatusReport, encode
from firmware_bundles.uptane import Assignment
from vehicle_agent.consent import Offer
from vehicle_agent.health import HeaderHealthCheck
from vehicle_agent.installer import SlotBackend
from vehicle_agent.owner import Consent, ScriptedOwner
from vehicle_agent.vehicle import FakeVehicle, Reading

from .conftest import Car
from .fakes import OTHER_VIN, SERIAL, FakeServer
from .kill_harness import HookedTransport
from .test_campaign_gate import INSTALL, until

S = ReportState
HEALTH = FailureReason.HEALTH_CHECK_FAILED
HAPPY = [S.NOTIFIED, *INSTALL]


class PowerOff(BaseException):
    pass


@pytest.fixture(autouse=True)
def released(server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})


async def forever(_seconds: float) -> None:
    await asyncio.get_running_loop().create_future()


def downloads(car: Car) -> list[str]:
    folder = car.state_dir / "downloads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def test_a_deferred_car_withdrawn_stops_and_reports_withdrawn(car: Car, server: FakeServer) -> None:
    owner = ScriptedOwner()
    car.build(vehicle=FakeVehicle(Reading(parked=False)), sleep=forever, owner=owner)
    notice = server.notice()
    car.link.deliver(notice)
    running = asyncio.ensure_future(car.agent.run())
    await until(lambda: S.DEFERRED in car.states)

    car.link.deliver(server.withdrawal(notice))
    await until(lambda: S.WITHDRAWN in car.states)
    car.link.close()
    await asyncio.wait_for(running, timeout=60)  # a hang guard

    assert car.states == [S.NOTIFIED, S.DEFERRED, S.WITHDRAWN]
    last = car.link.reports[-1]
    assert (last.nonce, last.deferrals, last.attempt) == (notice.nonce, 1, 1)
    car.assert_untouched()
    assert owner.shown[-1] == ("result", 1, "withdrawn")


async def test_a_car_waiting_for_consent_is_withdrawn_without_an_answer(car: Car, server: FakeServer) -> None:
    class Silent(ScriptedOwner):
        async def ask_consent(self, notice: CampaignNotice, offer: Offer) -> Consent:
            await asyncio.get_running_loop().create_future()
            raise AssertionError("unreachable")

    car.build(owner=Silent())
    notice = server.notice(safety_recall=False, requires_consent=True)
    running = asyncio.ensure_future(car.agent.handle(notice))
    await until(lambda: car.states == [S.NOTIFIED])
    await asyncio.sleep(0)

    assert await car.agent.withdraw(server.withdrawal(notice)) is S.WITHDRAWN

    assert await asyncio.wait_for(running, timeout=60) is S.WITHDRAWN
    assert car.states == [S.NOTIFIED, S.WITHDRAWN]
    car.assert_untouched()


async def test_a_withdrawal_during_the_download_lands_at_the_next_step_and_drops_the_bundle(
    car: Car, server: FakeServer
) -> None:
    notice = server.notice()
    pending: list[asyncio.Task[ReportState | None]] = []

    def on_report(report: StatusReport) -> None:
        if report.state is S.DOWNLOADING:  # the withdrawal arrives while the bundle streams in a thread
            pending.append(asyncio.ensure_future(car.agent.withdraw(server.withdrawal(notice))))

    car.build(on_report=on_report)
    assert await car.agent.handle(notice) is S.WITHDRAWN

    assert [await task for task in pending] == [S.WITHDRAWN]
    assert car.states == [S.NOTIFIED, S.DOWNLOADING, S.WITHDRAWN]
    assert downloads(car) == []
    car.assert_untouched()


async def test_a_withdrawal_after_a_power_cut_cleans_the_partial_download(car: Car, server: FakeServer) -> None:
    def cut_power(done: int) -> None:
        if done >= 8192:
            raise PowerOff

    car.build(transport=HookedTransport(server.transport, cut_power))
    notice = server.notice()
    with pytest.raises(PowerOff):
        await car.agent.handle(notice)
    assert any(name.endswith(".part") for name in downloads(car))

    owner = ScriptedOwner()
    car.build(owner=owner)  # restarted; the withdrawal is read before the campaign resumes
    assert await car.agent.withdraw(server.withdrawal(notice)) is S.WITHDRAWN
    assert await car.agent.resume() == []
    assert owner.shown == [("result", 1, "withdrawn")]  # the notice was shown before the power cut

    assert downloads(car) == []
    assert car.states == [S.WITHDRAWN]
    car.assert_untouched()


@pytest.mark.parametrize("when", [S.INSTALLING, S.REBOOTING])
async def test_a_withdrawal_once_installing_is_finished_as_usual(
    car: Car, server: FakeServer, when: ReportState
) -> None:
    notice = server.notice()
    answers: list[asyncio.Task[ReportState | None]] = []

    def on_report(report: StatusReport) -> None:
        if report.state is when:
            answers.append(asyncio.ensure_future(car.agent.withdraw(server.withdrawal(notice))))

    car.build(on_report=on_report)
    assert await car.agent.handle(notice) is S.REMEDIED

    assert [(await a) in (S.INSTALLING, S.REBOOTING) for a in answers] == [True]
    assert car.states == HAPPY
    assert car.running_version() == "2.0"


async def test_a_withdrawal_while_rolling_back_ends_rolled_back(car: Car, server: FakeServer) -> None:
    class Unhealthy:
        def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
            return "brake controller silent"

    notice = server.notice()
    answers: list[asyncio.Task[ReportState | None]] = []

    def on_report(report: StatusReport) -> None:
        if report.state is S.REBOOTING:
            answers.append(asyncio.ensure_future(car.agent.withdraw(server.withdrawal(notice))))

    car.build(on_report=on_report, health=Unhealthy())
    assert await car.agent.handle(notice) is S.ROLLED_BACK
    assert car.states == [*HAPPY[:-1], S.ROLLED_BACK]
    car.assert_untouched(spare=None)


async def test_withdrawals_for_unknown_or_finished_campaigns_or_another_nonce_are_ignored(
    car: Car, server: FakeServer, tmp_path: Path
) -> None:
    notice = server.notice()
    assert await car.agent.withdraw(server.withdrawal(server.notice(5))) is None  # never heard of it

    vehicle = FakeVehicle(Reading(parked=False))
    car.build(vehicle=vehicle, sleep=forever)
    running = asyncio.ensure_future(car.agent.handle(notice))
    await until(lambda: S.DEFERRED in car.states)
    assert await car.agent.withdraw(server.withdrawal(notice, nonce="another-nonce-0000")) is None
    vehicle.set(parked=True)
    assert await asyncio.wait_for(running, timeout=60) is S.REMEDIED

    assert await car.agent.withdraw(server.withdrawal(notice)) is None  # already remedied
    assert car.states == [S.NOTIFIED, S.DEFERRED, *INSTALL]


async def test_a_withdrawal_before_its_notice_keeps_the_car_out_of_the_campaign(car: Car, server: FakeServer) -> None:
    """Outside test (issue 18): a car offline while an operator recorded it (stolen, fixed at a dealer) got the
    retained withdrawal before its queued notice on reconnecting, ignored the withdrawal, then acted on the
    notice: the owner was shown the recall and the car tried to install."""
    owner = ScriptedOwner()
    car.build(owner=owner)
    notice = server.notice(7)
    assert await car.agent.withdraw(server.withdrawal(notice)) is None  # not started: nothing to stop
    assert await car.agent.handle(notice) is S.WITHDRAWN
    assert S.NOTIFIED not in car.states and car.running_version() == "1.0"
    assert downloads(car) == [] and not owner.shown
    # A later notice of the campaign with a new nonce (an operator's retry) is a new attempt as usual.
    assert await car.agent.handle(server.notice(7, nonce="retry-nonce-000001")) is S.REMEDIED


async def test_malformed_or_misaddressed_withdrawals_are_dropped_at_the_link(car: Car, server: FakeServer) -> None:
    notice = server.notice(7)
    car.link.deliver(b'{"kind": "withdrawal", "campaign_id": 7}')
    car.link.deliver(encode(server.withdrawal(notice)).replace(b'"kind":"withdrawal"', b'"kind":"withdrawal","x":1'))
    car.link.deliver(server.withdrawal(server.notice(7, vin=OTHER_VIN)))
    car.link.deliver(notice)
    car.link.close()

    await car.agent.run()

    assert car.link.malformed == 3
    assert car.states == HAPPY


# -- rolled back, and the retry ---------------------------------------------------------


class UnhealthyOnce:
    def __init__(self) -> None:
        self.checks = 0

    def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
        self.checks += 1
        if self.checks == 1:
            return "brake controller silent"
        return HeaderHealthCheck().check(slots, expected)


async def test_a_failed_health_check_reports_rolled_back_and_a_new_nonce_retries_as_attempt_2(
    car: Car, server: FakeServer
) -> None:
    car.build(health=UnhealthyOnce())
    first = server.notice()
    assert await car.agent.handle(first) is S.ROLLED_BACK
    rolled_back = car.link.reports[-1]
    assert (rolled_back.state, rolled_back.reason, rolled_back.health_ok) == (S.ROLLED_BACK, HEALTH, False)
    assert rolled_back.attempt == 1 and "rolled back" in rolled_back.detail
    car.assert_untouched(spare=None)

    assert await car.agent.handle(first) is S.ROLLED_BACK  # the same notice again: only re-sent
    assert len(car.link.reports) == len(HAPPY) + 1

    retry = server.notice(nonce="retry-nonce-0000000001")
    assert await car.agent.handle(retry) is S.REMEDIED

    second = car.link.reports[len(HAPPY) + 1 :]
    assert [r.state for r in second] == HAPPY
    assert {(r.attempt, r.nonce, r.deferrals) for r in second} == {(2, retry.nonce, 0)}
    assert car.running_version() == "2.0"
