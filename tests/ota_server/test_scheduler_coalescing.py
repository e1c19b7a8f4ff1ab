"""Ingest never waits for the scheduler: ticks asked for while one runs coalesce into one more."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection

import pytest

from firmware_bundles.messages import ReportState
from ota_server.rollout.campaign_tick import TickResult
from ota_server.rollout.coordinator import Coordinator
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, report, vin


class BlockedTicks:
    """Counts ticks; each waits for ``release`` (in the worker thread, as a slow tick would)."""

    def __init__(self, scheduler: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        original = scheduler.tick_sync

        def tick_sync(campaign_ids: Collection[int] | None = None, **options: int) -> TickResult:
            self.calls += 1
            self.started.set()
            assert self.release.wait(10), "the test never released the tick"
            return original(campaign_ids, **options)

        monkeypatch.setattr(scheduler, "tick_sync", tick_sync)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 5), "no tick started"


async def test_the_ingest_hook_returns_while_a_tick_runs(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = env.runtime.coordinator
    ticks = BlockedTicks(scheduler, monkeypatch)
    scheduler.poke()
    await ticks.wait_started()  # a tick holds the scheduler now
    await asyncio.wait_for(scheduler.on_reports({1}), 1)  # the hook does not wait for it
    ticks.release.set()
    await scheduler.idle()
    assert ticks.calls == 2  # the running tick, then the one the hook asked for


async def test_a_burst_of_batches_during_a_tick_costs_one_more_tick(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = env.runtime.coordinator
    ticks = BlockedTicks(scheduler, monkeypatch)
    await scheduler.on_reports({1})
    await ticks.wait_started()
    await asyncio.wait_for(asyncio.gather(*(scheduler.on_reports({1}) for _ in range(5))), 1)
    ticks.release.set()
    await scheduler.idle()
    assert ticks.calls == 2  # not one per batch


async def test_reports_are_stored_while_a_tick_runs(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vins = [vin(n) for n in range(1, 4)]
    campaign = await launched(env.client, vins)
    nonces = await env.nonces()
    scheduler = env.runtime.coordinator
    ticks = BlockedTicks(scheduler, monkeypatch)
    scheduler.poke()
    await ticks.wait_started()
    for v in vins:  # one batch each (the worker takes what is queued), each moving a car
        env.runtime.ingestor.submit(*report(campaign["id"], v, nonces[v], ReportState.DOWNLOADING))
        await asyncio.wait_for(env.runtime.ingestor.flush(), 2)  # stored without waiting for the tick
    assert env.runtime.ingestor.stats().accepted == len(vins)
    ticks.release.set()
    await scheduler.idle()
    assert ticks.calls == 2


async def test_stop_lets_the_running_tick_finish_and_starts_no_other(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = env.runtime.coordinator
    ticks = BlockedTicks(scheduler, monkeypatch)
    scheduler.poke()
    await ticks.wait_started()
    await scheduler.on_reports({1})  # wanted after the running one, but the scheduler stops first
    stopping = asyncio.create_task(scheduler.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # waits for the running tick
    ticks.release.set()
    await asyncio.wait_for(stopping, 5)
    assert ticks.calls == 1


async def test_ingest_asks_wait_out_the_report_gap_but_a_poke_does_not(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduler = env.runtime.coordinator
    monkeypatch.setattr(scheduler, "_report_gap_s", 3600.0)  # an hour: only a poke can bring the next tick
    ticks = BlockedTicks(scheduler, monkeypatch)
    ticks.release.set()
    await scheduler.on_reports({1})  # no tick ran before: the first runs at once
    await scheduler.idle()
    assert ticks.calls == 1
    await scheduler.on_reports({1})
    await scheduler.on_reports({1})
    await asyncio.sleep(0.3)
    assert ticks.calls == 1  # held for the gap (and the two asks are one)
    scheduler.poke()  # a launch or a control action: at once, and the held ask goes with it
    await asyncio.wait_for(scheduler.idle(), 10)
    assert ticks.calls == 2


async def test_stop_does_not_wait_out_the_report_gap(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = env.runtime.coordinator
    monkeypatch.setattr(scheduler, "_report_gap_s", 3600.0)
    ticks = BlockedTicks(scheduler, monkeypatch)
    ticks.release.set()
    await scheduler.on_reports({1})
    await scheduler.idle()
    await scheduler.on_reports({1})  # held for an hour
    await asyncio.wait_for(scheduler.stop(), 10)
    assert ticks.calls == 1  # stopped without the held tick
