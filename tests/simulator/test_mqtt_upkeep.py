"""The simulated cars' MQTT upkeep (simulator.mqtt_upkeep): one housekeeping task, sessions counted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from simulator.mqtt_upkeep import Housekeeping, Sessions
from simulator.runner import _CountingLink
from vehicle_agent.config import AgentConfig, EcuConfig


class FakePaho:
    """What the housekeeping calls: ``loop_misc``, counted; failing once ``gone``."""

    def __init__(self) -> None:
        self.calls = 0
        self.gone = False

    def loop_misc(self) -> int:
        self.calls += 1
        return mqtt.MQTT_ERR_NO_CONN if self.gone else mqtt.MQTT_ERR_SUCCESS


def as_paho(client: FakePaho) -> Any:
    return client


async def test_each_client_gets_loop_misc_once_per_round_of_buckets() -> None:
    upkeep = Housekeeping(10.0, buckets=10)
    clients = [FakePaho() for _ in range(25)]
    for client in clients:
        upkeep.add(as_paho(client))
    for _ in range(3 * 10):  # three rounds: each wake-up does one bucket
        upkeep.run_turn()
    assert [c.calls for c in clients] == [3] * 25
    assert len(upkeep) == 25


async def test_a_client_whose_connection_is_gone_is_dropped_and_its_loop_ends() -> None:
    upkeep = Housekeeping(10.0, buckets=2)
    kept, gone = FakePaho(), FakePaho()
    ended_kept, ended_gone = upkeep.add(as_paho(kept)), upkeep.add(as_paho(gone))
    gone.gone = True
    upkeep.run_turn()
    upkeep.run_turn()
    assert ended_gone.done() and not ended_kept.done()
    assert len(upkeep) == 1
    upkeep.run_turn()
    upkeep.run_turn()
    assert (kept.calls, gone.calls) == (2, 1)  # not called again once gone
    upkeep.discard(as_paho(kept))  # aiomqtt cancelled its loop as the socket closed
    assert len(upkeep) == 0


async def test_the_task_runs_a_bucket_each_interval_share() -> None:
    upkeep = Housekeeping(0.05, buckets=5)
    client = FakePaho()
    upkeep.add(as_paho(client))
    task = asyncio.create_task(upkeep.run())
    try:
        for _ in range(400):
            if client.calls >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert client.calls >= 2


def config(vin: str) -> AgentConfig:
    return AgentConfig(
        vin=vin,
        ecus=(EcuConfig("ECU-1", "hw", "1.0"),),
        mqtt_url="mqtt://127.0.0.1:9",
        repo_url="http://repo.invalid",
        state_dir=Path("/nonexistent"),
        image_root=b"{}",
        director_root=b"{}",
    )


def test_sessions_are_counted_as_links_connect_drop_and_are_replaced() -> None:
    """What the worker's progress says (connected, reconnects), kept as sessions start and end."""
    sessions = Sessions()
    first = _CountingLink(config("1HGCM82633A004352"), lambda _r: None, sessions=sessions)
    other = _CountingLink(config("1HGCM82633A004353"), lambda _r: None, sessions=sessions)
    session: Any = object()
    first._client = session
    other._client = session
    assert (sessions.connected, sessions.reconnects) == (2, 0)
    assert first.connected and other.connected
    first._client = None  # the link dropped ...
    first._client = None  # (ending twice counts once)
    assert (sessions.connected, sessions.reconnects) == (1, 0)
    first._client = session  # ... and connected again
    assert (sessions.connected, sessions.reconnects) == (2, 1)
    first._client = None  # a power cut: the link ends, a new one takes the car
    replacement = _CountingLink(config("1HGCM82633A004352"), lambda _r: None, sessions=sessions)
    replacement._client = session
    assert (sessions.connected, sessions.reconnects) == (2, 1)  # a new link's first session is not a reconnect


async def test_a_simulated_car_keeps_alive_long_enough_to_ride_out_its_workers_lag() -> None:
    """The broker drops a car after 1.5 keep-alives of silence; a car pings after one, plus its worker's
    lag. At the agent's 60 s, thousands of cars were dropped during a 30,000-car launch (issue 19)."""
    from dataclasses import replace

    from simulator.runner import MISC_INTERVAL_S, SIM_KEEPALIVE_S

    assert config("1HGCM82633A004352").mqtt.keepalive == 60  # the real agent's default, unchanged
    link = _CountingLink(config("1HGCM82633A004352"), lambda _r: None)
    keepalive = link._new_client()._keepalive
    assert keepalive == SIM_KEEPALIVE_S
    # a ping at most MISC_INTERVAL_S late still reaches the broker with 60 s of lag to spare
    assert keepalive + MISC_INTERVAL_S + 60 < 1.5 * keepalive
    longer = replace(config("1HGCM82633A004352"), mqtt=replace(config("x").mqtt, keepalive=600))
    assert _CountingLink(longer, lambda _r: None)._new_client()._keepalive == 600  # a longer one is kept
