"""A launch bigger than one tick's batch is released batch after batch, without waiting for the interval."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, vin


async def test_a_capped_tick_carries_on_at_once_until_every_car_is_notified(env: Env) -> None:
    env.runtime.coordinator._max_per_tick = 2  # the periodic tick is off in these tests (interval 0)
    vins = [vin(n) for n in range(1, 8)]
    await launched(env.client, vins)
    await env.runtime.coordinator.idle()
    nonces = await env.nonces()
    assert sorted(nonces) == sorted(vins)  # without carrying on: 2, and no periodic tick to release more


async def test_candidates_are_read_a_page_at_a_time(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from ota_server.rollout import notifying

    monkeypatch.setattr(notifying, "_CANDIDATE_PAGE", 1)
    env.runtime.coordinator._max_per_tick = 1  # pages of 2 cars, one released per tick
    vins = [vin(n) for n in range(1, 6)]
    await launched(env.client, vins)
    await env.runtime.coordinator.idle()
    assert sorted(await env.nonces()) == sorted(vins)


async def test_each_carried_tick_releases_four_times_the_last_up_to_sixteen_times_the_cap(env: Env) -> None:
    coordinator = env.runtime.coordinator
    coordinator._max_per_tick = 2
    batches: list[int] = []
    dispatch = coordinator._dispatch

    def recorded(messages: Any) -> None:
        batches.append(len(messages))
        dispatch(messages)

    coordinator._dispatch = recorded
    vins = [vin(n) for n in range(1, 61)]
    await launched(env.client, vins)
    await coordinator.idle()
    assert batches == [2, 8, 32, 18]  # 2, then x4 each tick, capped at 16 x 2 = 32
    assert sorted(await env.nonces()) == sorted(vins)
