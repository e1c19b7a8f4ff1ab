"""The update pipeline end to end against the in-memory repository, and restarts."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from firmware_bundles.messages import ReportState, StatusReport
from firmware_bundles.uptane import Assignment
from vehicle_agent.installer import SlotBackend
from vehicle_agent.journal import Journal

from .conftest import Car
from .fakes import OLD, OTHER_VIN, SERIAL, VIN, FakeServer

S = ReportState
HAPPY = [S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING, S.REMEDIED]


class Crash(BaseException):
    """The power goes off: nothing in the agent catches it."""


def crash_at(state: ReportState) -> Callable[[StatusReport], None]:
    def on_report(report: StatusReport) -> None:
        if report.state is state:
            raise Crash(state.value)

    return on_report


def assign_new(server: FakeServer, version: str = "2.0", counter: int = 2) -> None:
    server.assign({SERIAL: server.release(version, counter)})


async def test_happy_path_installs_boots_and_commits_the_spare_slot(car: Car, server: FakeServer) -> None:
    assign_new(server)
    notice = server.notice()

    assert await car.agent.handle(notice) is S.REMEDIED

    assert car.states == HAPPY
    last = car.link.reports[-1]
    assert (last.campaign_id, last.nonce, last.vin, last.attempt) == (notice.campaign_id, notice.nonce, VIN, 1)
    assert (last.ecu_serial, last.installed_version, last.health_ok) == (SERIAL, "2.0", True)
    assert car.slots.booted_slot() == car.slots.active_slot() == "b"
    assert car.slots.pending_try() is None
    assert car.running_version() == "2.0"
    assert car.agent.journal.data.outbox == []
    # the notice's repo_url is informational; only the configured repository was asked
    assert all(url.startswith("http://repo.test/") for url in server.transport.requests)


async def test_second_update_writes_the_other_slot(car: Car, server: FakeServer) -> None:
    assign_new(server, "2.0", 2)
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED
    assign_new(server, "3.0", 3)
    assert await car.agent.handle(server.notice(2)) is S.REMEDIED
    assert car.slots.active_slot() == "a"
    assert car.running_version() == "3.0"


async def test_a_repeated_notice_only_resends_the_terminal_report(car: Car, server: FakeServer) -> None:
    assign_new(server)
    notice = server.notice()
    await car.agent.handle(notice)
    requests = len(server.transport.requests)

    assert await car.agent.handle(notice) is S.REMEDIED

    assert car.states == [*HAPPY, S.REMEDIED]
    assert len(server.transport.requests) == requests


async def test_already_running_the_assigned_version_is_remedied_without_install(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release(OLD, 1)})
    assert await car.agent.handle(server.notice()) is S.REMEDIED
    assert car.states == [S.NOTIFIED, S.DOWNLOADING, S.REMEDIED]
    car.assert_untouched()


async def test_reports_wait_in_the_outbox_while_offline(car: Car, server: FakeServer) -> None:
    assign_new(server)
    car.link.online = False
    assert await car.agent.handle(server.notice()) is S.REMEDIED
    assert car.link.reports == []
    assert [r.state for r in car.agent.journal.data.outbox] == HAPPY

    await car.link.reconnect()
    assert car.states == HAPPY
    assert car.agent.journal.data.outbox == []


@pytest.mark.parametrize("state", [S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING])
async def test_restart_resumes_from_each_journaled_step(car: Car, server: FakeServer, state: ReportState) -> None:
    assign_new(server)
    car.build(on_report=crash_at(state))
    with pytest.raises(Crash):
        await car.agent.handle(server.notice())
    assert Journal(car.state_dir / "journal.json").data.campaigns[1].state is state
    assert car.running_version() == OLD

    car.build()
    assert await car.agent.resume() == [S.REMEDIED]

    # the crashed report stays in the outbox and is delivered after the restart
    assert car.states[0] is state
    assert car.states[-1] is S.REMEDIED
    assert car.slots.booted_slot() == car.slots.active_slot() == "b"
    assert car.running_version() == "2.0"


async def test_restart_after_the_reboot_health_checks_the_booted_slot(car: Car, server: FakeServer) -> None:
    assign_new(server)

    class CrashOnce:
        def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
            raise Crash("power lost during the health check")

    car.build(health=CrashOnce())
    with pytest.raises(Crash):
        await car.agent.handle(server.notice())
    assert car.slots.booted_slot() == "b"
    assert car.slots.active_slot() == "a"  # booted on trial, not committed

    car.build()
    assert await car.agent.resume() == [S.REMEDIED]
    assert car.slots.active_slot() == "b"
    assert car.running_version() == "2.0"


async def test_restart_mid_write_rewrites_the_spare_slot_only(car: Car, server: FakeServer) -> None:
    assign_new(server)
    slots = car.slots
    original_write = slots._write

    def torn_write(slot: str, image: object) -> None:
        (slots.directory / f"slot_{slot}.img").write_bytes(b"torn")
        raise Crash("power lost while writing")

    slots._write = torn_write  # type: ignore[method-assign]
    with pytest.raises(Crash):
        await car.agent.handle(server.notice())
    slots._write = original_write  # type: ignore[method-assign]
    assert car.running_version() == OLD
    assert slots.pending_try() is None

    car.build()
    assert await car.agent.resume() == [S.REMEDIED]
    assert car.running_version() == "2.0"


async def test_run_ignores_malformed_notices_and_handles_the_rest(car: Car, server: FakeServer) -> None:
    assign_new(server)
    car.link.deliver(b"{not json")
    car.link.deliver(b'{"kind": "campaign", "campaign_id": -1}')
    car.link.deliver(server.notice(vin=OTHER_VIN))  # a notice for someone else
    car.link.deliver(server.notice(7))
    car.link.close()

    await car.agent.run()

    assert car.link.malformed == 3
    assert car.states == HAPPY
    assert {r.campaign_id for r in car.link.reports} == {7}
    assert car.running_version() == "2.0"


async def test_on_report_sees_every_step(car: Car, server: FakeServer) -> None:
    assign_new(server)
    seen: list[StatusReport] = []
    car.build(on_report=seen.append)
    await car.agent.handle(server.notice())
    assert [r.state for r in seen] == HAPPY
    assert car.agent.status()["installed"] == {SERIAL: {"version": "2.0", "release_counter": 2}}
