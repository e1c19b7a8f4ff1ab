"""The notice floor: a launch's notices through the server's publishing code and the brokers alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import notice_floor as floor_module
from bench.notice_floor import VIN_PREFIX, floor_topics, notice_floor
from firmware_bundles import topics
from simulator.brokers import CAMPAIGNS, BrokerCluster, Listener, mosquitto_binary, mosquitto_tool
from tests import services


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BrokerCluster]:
    if mosquitto_binary() is None or mosquitto_tool("mosquitto_sub") is None:
        if services.required():
            pytest.fail("mosquitto or mosquitto_sub is missing and OTA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("mosquitto or mosquitto_sub is not installed")
    with BrokerCluster(tmp_path / "brokers", 3, own_sessions=True) as brokers:
        yield brokers


def _retained(port: int, host: str, count: int, timeout_s: float = 20.0) -> dict[str, bytes]:
    """The retained messages on the floor's topics of one broker, by topic (a fresh subscriber gets them)."""
    with Listener(host, port, CAMPAIGNS) as listener:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = {t: p for _, t, p, retained in listener.received() if retained and VIN_PREFIX in t}
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return {t: p for _, t, p, retained in listener.received() if retained and VIN_PREFIX in t}


def test_the_floor_topics_are_campaign_topics_of_no_car() -> None:
    names = floor_topics(3)
    assert len(set(names)) == 3
    for name in names:
        vin = topics.vin_from_topic(name)
        assert name == topics.campaign_topic(vin)
        assert vin.startswith(VIN_PREFIX)


def test_the_notices_reach_the_hub_and_every_leaf_retained_as_a_launchs_do(cluster: BrokerCluster) -> None:
    result = notice_floor(cluster.hub, cluster.leaves, 300, 2000)

    assert result.note == ""
    assert result.seconds is not None and result.seconds > 0
    assert set(result.cpu_seconds) == {"hub", "leaf-1", "leaf-2", "subscriber", "publisher"}
    assert all(seconds >= 0 for seconds in result.cpu_seconds.values())
    assert result.as_json()["notices"] == 300 and result.as_json()["payload_bytes"] == 2000
    for broker in [cluster.hub, *cluster.leaves]:
        stored = _retained(broker.port, broker.host, 300)
        assert sorted(stored) == sorted(floor_topics(300)), broker.name
        assert {len(payload) for payload in stored.values()} == {2000}


def test_nothing_to_send_and_no_subscriber_are_said_not_timed(
    cluster: BrokerCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = notice_floor(cluster.hub, cluster.leaves, 0, 2000)
    assert empty.seconds is None and empty.note == "nothing to send"

    monkeypatch.setattr(floor_module, "mosquitto_tool", lambda _name: None)
    missing = notice_floor(cluster.hub, cluster.leaves, 10, 2000)
    assert missing.seconds is None and missing.note == "mosquitto_sub not installed"


def test_a_hub_gone_is_said_not_timed(cluster: BrokerCluster) -> None:
    hub = cluster.hub
    cluster.stop()
    result = notice_floor(hub, [], 10, 100, timeout_s=5)
    assert result.seconds is None
    assert result.note.startswith("mosquitto_sub failed: ")


def test_the_publisher_takes_no_subscription_so_no_cars_retained_presence_pours_in() -> None:
    """The server's link subscribes to every car's status and presence; the floor's publisher, the same
    link otherwise, subscribes to nothing (30,000 retained presence messages would arrive as it publishes)."""

    class Client:
        calls: list[object] = []

        async def subscribe(self, *args: object, **kwargs: object) -> None:
            self.calls.append((args, kwargs))

    link = floor_module._PublishOnly(
        "mqtt://127.0.0.1:1", lambda _t, _p, _a: None, client_id="floor", username="", version=5
    )
    client = Client()
    asyncio.run(link._subscribe(client))  # type: ignore[arg-type]
    assert client.calls == []
    assert link.subscriptions  # the server's own subscriptions are there to be left out
