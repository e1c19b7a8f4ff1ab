"""Install and boot on file slots: disk full, a truncated slot, rollbacks with their reason,
the boot-attempt limit, and a network cut mid-download."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import pytest

from firmware_bundles.messages import FailureReason, ReportState
from firmware_bundles.uptane import Assignment
from vehicle_agent.errors import FetchError
from vehicle_agent.installer import SlotBackend
from vehicle_agent.transport import Chunks, MemoryTransport

from .conftest import Car
from .fakes import OLD, SERIAL, FakeServer

S = ReportState
R = FailureReason


class PowerLost(BaseException):
    """The process dies: nothing in the agent catches it."""


def assign_new(server: FakeServer, version: str = "2.0", counter: int = 2) -> None:
    server.assign({SERIAL: server.release(version, counter)})


async def test_disk_full_while_writing_fails_cleanly_and_a_later_update_succeeds(car: Car, server: FakeServer) -> None:
    assign_new(server)
    slots = car.slots
    real_write = slots._write

    def disk_full(slot: str, image: IO[bytes]) -> None:
        (slots.directory / f"slot_{slot}.img").write_bytes(image.read(1000))
        raise OSError(errno.ENOSPC, "No space left on device")

    slots._write = disk_full  # type: ignore[method-assign]
    assert await car.agent.handle(server.notice(1)) is S.FAILED
    last = car.link.reports[-1]
    assert last.reason is R.INSTALL_FAILED
    assert "No space left" in last.detail
    car.assert_untouched(spare=None)

    slots._write = real_write  # type: ignore[method-assign]
    assign_new(server, "3.0", 3)
    assert await car.agent.handle(server.notice(2)) is S.REMEDIED
    assert car.running_version() == "3.0"


async def test_a_truncated_slot_image_is_caught_before_switching(car: Car, server: FakeServer) -> None:
    assign_new(server)
    slots = car.slots
    real_write = slots._write

    def truncating(slot: str, image: IO[bytes]) -> None:
        data = image.read()
        (slots.directory / f"slot_{slot}.img").write_bytes(data[: len(data) // 2])  # no error: silent loss

    slots._write = truncating  # type: ignore[method-assign]
    assert await car.agent.handle(server.notice(1)) is S.FAILED
    assert car.link.reports[-1].reason is R.INSTALL_FAILED
    assert "read back" in car.link.reports[-1].detail
    car.assert_untouched(spare=None)
    assert slots.pending_try() is None  # never armed

    slots._write = real_write  # type: ignore[method-assign]
    assign_new(server, "3.0", 3)
    assert await car.agent.handle(server.notice(2)) is S.REMEDIED


async def test_a_failed_health_check_reports_that_it_rolled_back(car: Car, server: FakeServer) -> None:
    class Unhealthy:
        def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
            return "brake controller silent"

    car.build(health=Unhealthy())
    assign_new(server)
    assert await car.agent.handle(server.notice()) is S.ROLLED_BACK
    last = car.link.reports[-1]
    assert (last.state, last.reason, last.health_ok) == (S.ROLLED_BACK, R.HEALTH_CHECK_FAILED, False)
    assert last.detail.endswith("brake controller silent; rolled back to slot a")
    car.assert_untouched(spare=None)


async def test_the_boot_attempt_limit_ends_a_crash_loop(car: Car, server: FakeServer) -> None:
    """New software that kills the agent during its health check must not loop forever."""

    class KillsTheAgent:
        def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
            raise PowerLost

    assign_new(server)
    car.build(health=KillsTheAgent())
    with pytest.raises(PowerLost):
        await car.agent.handle(server.notice())
    limit = car.agent.config.installer.max_boot_attempts
    for _ in range(limit - 1):
        car.build(health=KillsTheAgent())
        with pytest.raises(PowerLost):
            await car.agent.resume()
    assert car.agent.journal.data.campaigns[1].boot_attempts == limit

    car.build(health=KillsTheAgent())
    assert await car.agent.resume() == [S.ROLLED_BACK]
    last = car.link.reports[-1]
    assert last.reason is R.BOOT_FAILED
    assert f"after {limit} boot attempts; rolled back" in last.detail
    car.assert_untouched(spare=None)


async def test_power_lost_while_rolling_back_is_finished_on_the_next_start(car: Car, server: FakeServer) -> None:
    class Unhealthy:
        def check(self, slots: SlotBackend, expected: Assignment) -> str | None:
            return "silent"

    car.build(health=Unhealthy())
    assign_new(server)

    def lose_power() -> None:
        raise PowerLost

    car.slots.rollback = lose_power  # type: ignore[method-assign]
    with pytest.raises(PowerLost):
        await car.agent.handle(server.notice())
    assert (car.slots.booted_slot(), car.slots.active_slot()) == ("b", "a")  # stuck in the trial boot

    car.build()
    assert await car.agent.resume() == []  # nothing unfinished: the failure was journaled first
    assert car.slots.booted_slot() == car.slots.active_slot() == "a"
    assert car.running_version() == OLD
    await car.agent.flush()  # what run() does first
    assert [r.state for r in car.link.reports] == [S.ROLLED_BACK]  # its report, kept in the outbox
    assert car.link.reports[0].reason is R.HEALTH_CHECK_FAILED


class CutOnce:
    """The served repository, but the first bundle download loses the network after ``cut`` bytes."""

    def __init__(self, inner: MemoryTransport, cut: int) -> None:
        self.inner = inner
        self.cut = cut
        self.cuts = 0

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        with self.inner.stream(url, start=start) as chunks:
            if "/targets/" in url and self.cuts == 0:
                self.cuts += 1
                yield Chunks(self._cut(url, chunks), chunks.start)
            else:
                yield chunks

    def _cut(self, url: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        sent = 0
        for chunk in chunks:
            if sent + len(chunk) > self.cut:
                raise FetchError(url, "network unreachable")
            sent += len(chunk)
            yield chunk


async def test_the_network_cut_and_restored_mid_download(car: Car, server: FakeServer) -> None:
    assign_new(server)
    transport = CutOnce(server.transport, cut=20_000)
    car.agent = car.build()
    car.agent = type(car.agent)(
        car.agent.config, link=car.link, transport=transport, sleep=car.agent._sleep, retry_delay=0.0
    )
    assert await car.agent.handle(server.notice()) is S.REMEDIED
    assert transport.cuts == 1
    assert car.running_version() == "2.0"
