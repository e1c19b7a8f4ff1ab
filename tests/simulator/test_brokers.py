"""Bridged Mosquitto brokers: a notice retained on the hub reaches cars on a leaf, live and late,
and reports from a leaf reach the server's subscription on the hub exactly as from the hub."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from firmware_bundles import topics
from simulator.brokers import (
    BRIDGED,
    BrokerCluster,
    bridge_conf,
    broker_conf,
    broker_count,
    mosquitto_binary,
    probe_vin,
)
from simulator.workers import broker_routes, on_brokers
from tests import services

VIN_EARLY, VIN_LATE, VIN_HUB = "1HGCM82633A004352", "5YJSA1E26JF000001", "3VWFE21C04M000001"


def test_the_bridge_carries_reports_out_and_notices_in_at_qos_1() -> None:
    text = bridge_conf("leaf-1", "127.0.0.1", 1884)
    assert "address 127.0.0.1:1884" in text
    assert "try_private true" in text  # the hub keeps the retain flag for a bridge
    assert "cleansession false" in text
    for pattern, direction in BRIDGED:
        assert f"topic {pattern} {direction} 1" in text
    assert f"topic {topics.STATUS_SUBSCRIPTION} out 1" in text
    assert f"topic {topics.PRESENCE_SUBSCRIPTION} out 1" in text
    assert f"topic {topics.campaign_topic('+')} in 1" in text


def test_a_broker_for_a_load_run_takes_any_number_of_cars_and_queues_deep() -> None:
    text = broker_conf(1885, run_as="me", queue_limit=123)
    for line in ("listener 1885 127.0.0.1", "max_connections -1", "max_queued_messages 123", "persistence false"):
        assert line in text.splitlines()
    assert "user me" in text


@pytest.mark.parametrize(("cars", "brokers"), [(1, 2), (2000, 2), (15_000, 2), (15_001, 3), (30_000, 3)])
def test_no_leaf_holds_more_than_15000_cars(cars: int, brokers: int) -> None:
    assert broker_count(cars) == brokers


class Client:
    """A paho client as a car (persistent session, MQTT 3.1.1) or the server (v5, shared subscription)."""

    def __init__(self, port: int, client_id: str, *, v5: bool = False, clean: bool = False) -> None:
        self.messages: list[tuple[str, bytes, int, bool]] = []
        self.arrived = threading.Condition()
        if v5:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
            properties = Properties(packetType=1)  # type: ignore[no-untyped-call]  # CONNECT
            properties.SessionExpiryInterval = 0 if clean else 3600
            self.client.connect("127.0.0.1", port, clean_start=clean, properties=properties)
        else:
            self.client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=clean
            )
            self.client.connect("127.0.0.1", port)
        self.client.on_message = self._on_message
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append((message.topic, bytes(message.payload), message.qos, bool(message.retain)))
            self.arrived.notify_all()

    def subscribe(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.3)  # let the SUBACK (and any retained message) come back

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[str, bytes, int, bool]]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.messages) < count and time.monotonic() < deadline:
                self.arrived.wait(0.1)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BrokerCluster]:
    if mosquitto_binary() is None:
        if services.required():
            pytest.fail("the mosquitto binary is missing and OTA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("the mosquitto binary is not installed")
    # a hub and two leaves, each in a session of its own as ota-bench starts them
    with BrokerCluster(tmp_path / "brokers", 3, own_sessions=True) as brokers:
        yield brokers


def test_a_retained_notice_on_the_hub_reaches_cars_on_a_leaf_online_and_later(cluster: BrokerCluster) -> None:
    leaf = cluster.leaves[1]
    early = Client(leaf.port, VIN_EARLY)
    early.subscribe(topics.campaign_topic(VIN_EARLY))
    server = Client(cluster.hub.port, "ota-server", v5=True)
    notices = {vin: f'{{"kind": "campaign", "vin": "{vin}"}}'.encode() for vin in (VIN_EARLY, VIN_LATE)}
    for vin, payload in notices.items():
        server.publish(topics.campaign_topic(vin), payload, retain=True)

    # the car already connected gets it live
    assert early.wait_for(1) == [(topics.campaign_topic(VIN_EARLY), notices[VIN_EARLY], 1, False)]
    # a car that connects (for the first time) after the launch gets the retained copy from its leaf
    late = Client(leaf.port, VIN_LATE)
    late.subscribe(topics.campaign_topic(VIN_LATE))
    assert late.wait_for(1) == [(topics.campaign_topic(VIN_LATE), notices[VIN_LATE], 1, True)]
    # and a car that was offline with a persistent session gets what was queued for it
    early.close()
    again = f'{{"kind": "campaign", "vin": "{VIN_EARLY}", "n": 2}}'.encode()
    server.publish(topics.campaign_topic(VIN_EARLY), again, retain=True)
    time.sleep(0.5)
    back = Client(leaf.port, VIN_EARLY)
    assert [m[1] for m in back.wait_for(1)] == [again]
    for client in (late, back, server):
        client.close()


def test_reports_from_leaf_cars_reach_the_servers_shared_subscription_as_from_hub_cars(
    cluster: BrokerCluster,
) -> None:
    server = Client(cluster.hub.port, "ota-server", v5=True)
    server.subscribe(f"$share/ota-ingest/{topics.STATUS_SUBSCRIPTION}")
    server.subscribe(f"$share/ota-ingest/{topics.PRESENCE_SUBSCRIPTION}")
    on_leaves = [Client(leaf.port, vin) for leaf, vin in zip(cluster.leaves, (VIN_EARLY, VIN_LATE), strict=True)]
    on_hub = Client(cluster.hub.port, VIN_HUB)
    sent = []
    for index, (car, vin) in enumerate(zip([*on_leaves, on_hub], (VIN_EARLY, VIN_LATE, VIN_HUB), strict=True)):
        for n in range(50):
            payload = f'{{"vin": "{vin}", "n": {n}, "car": {index}}}'.encode()
            car.publish(topics.status_topic(vin), payload)
            sent.append((topics.status_topic(vin), payload))
        car.publish(topics.presence_topic(vin), b'{"online": true}', retain=True)
    got = server.wait_for(len(sent) + 3)
    reports = [(topic, payload) for topic, payload, qos, _ in got if topic.endswith("/status") and qos == 1]
    assert sorted(reports) == sorted(sent)  # each exactly once, QoS 1, bytes unchanged
    for vin in (VIN_EARLY, VIN_LATE, VIN_HUB):  # and in order per car
        assert [p for t, p in reports if vin in t] == [p for t, p in sent if vin in t]
    assert {t for t, *_ in got if t.endswith("/presence")} == {
        topics.presence_topic(v) for v in (VIN_EARLY, VIN_LATE, VIN_HUB)
    }
    for client in (*on_leaves, on_hub, server):
        client.close()


def test_a_cluster_reports_its_processes_and_stops_them(cluster: BrokerCluster) -> None:
    pids = cluster.pids()
    assert set(pids) == {"hub", "leaf-1", "leaf-2"}
    # each broker in a session of its own: its own share of the CPU against the cars (simulator.cpu_share)
    assert all(os.getsid(pid) == pid != os.getsid(0) for pid in pids.values())
    assert all(mb and mb > 0 for mb in cluster.peak_rss_mb().values())
    assert len(set(cluster.leaf_urls) | {cluster.hub_url}) == 3
    cluster.stop()
    cluster.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pids["hub"], 0)


def test_a_routed_bridge_carries_in_only_its_own_cars_notices_and_its_probe() -> None:
    text = bridge_conf("leaf-2", "127.0.0.1", 1884, [VIN_EARLY, VIN_LATE])
    lines = text.splitlines()
    assert f"topic {topics.campaign_topic('+')} in 1" not in lines  # not every car's notice
    assert f"topic {topics.campaign_topic(VIN_EARLY)} in 1" in lines
    assert f"topic {topics.campaign_topic(VIN_LATE)} in 1" in lines
    assert f"topic {topics.campaign_topic(probe_vin('leaf-2'))} in 1" in lines
    assert f"topic {topics.STATUS_SUBSCRIPTION} out 1" in lines  # reports still go out whole
    assert f"topic {topics.PRESENCE_SUBSCRIPTION} out 1" in lines


def test_routes_follow_how_the_workers_spread_the_cars() -> None:
    vins = [f"V{n}" for n in range(7)]
    routes = broker_routes(vins, 2)
    spread = on_brokers([{"vin": v} for v in vins], ["mqtt://a", "mqtt://b"])
    for urls_index, url in enumerate(["mqtt://a", "mqtt://b"]):
        assert routes[urls_index] == [doc["vin"] for doc in spread if doc["mqtt_url"] == url]
    with pytest.raises(ValueError, match="2 lists, not 1"):
        BrokerCluster(Path("unused"), 3, binary="mosquitto", routes=[vins])


def test_with_routes_the_hub_sends_each_notice_to_its_cars_leaf_only(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        if services.required():
            pytest.fail("the mosquitto binary is missing and OTA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("the mosquitto binary is not installed")
    with BrokerCluster(tmp_path / "brokers", 3, routes=[[VIN_EARLY], [VIN_LATE]]) as cluster:
        on_one, on_two = cluster.leaves
        # a client on each leaf listening for every car's notice: what reached that leaf at all
        seen_one, seen_two = Client(on_one.port, "watch-1"), Client(on_two.port, "watch-2")
        for watcher in (seen_one, seen_two):
            watcher.subscribe(topics.campaign_topic("+"))
        car = Client(on_two.port, VIN_LATE)
        car.subscribe(topics.campaign_topic(VIN_LATE))
        server = Client(cluster.hub.port, "ota-server", v5=True)
        for vin in (VIN_EARLY, VIN_LATE, VIN_HUB):  # VIN_HUB: a car on no leaf
            server.publish(topics.campaign_topic(vin), f'{{"vin": "{vin}"}}'.encode(), retain=True)
        assert [m[0] for m in car.wait_for(1)] == [topics.campaign_topic(VIN_LATE)]
        assert [m[0] for m in seen_one.wait_for(1)] == [topics.campaign_topic(VIN_EARLY)]
        assert [m[0] for m in seen_two.wait_for(1)] == [topics.campaign_topic(VIN_LATE)]
        time.sleep(0.5)  # anything routed wrongly would have arrived by now
        assert [m[0] for m in seen_one.messages] == [topics.campaign_topic(VIN_EARLY)]
        assert [m[0] for m in seen_two.messages] == [topics.campaign_topic(VIN_LATE)]
        for client in (seen_one, seen_two, car, server):
            client.close()
