"""Two server links in one MQTT v5 shared-subscription group on a real Mosquitto."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import aiomqtt
import pytest

from firmware_bundles import topics
from ota_server.mqtt.link import MQTT_V5, Ack, ServerMqttLink
from simulator.cluster import Mosquitto
from tests.ota_server.helpers import vin

pytestmark = pytest.mark.services


class Sink:
    """What one link received; acknowledges at once, or keeps the acks when ``hold``."""

    def __init__(self, hold: bool = False) -> None:
        self.payloads: list[bytes] = []
        self.acks: list[Ack] = []
        self.hold = hold

    def __call__(self, topic: str, payload: bytes, ack: Ack) -> bool:
        assert topic.endswith("/status")
        self.payloads.append(payload)
        self.acks.append(ack)
        return self.hold  # True: "I acknowledge once stored"


def link(broker: Mosquitto, name: str, sink: Callable[[str, bytes, Ack], bool]) -> ServerMqttLink:
    return ServerMqttLink(broker.url, sink, client_id=name, username=name, version=MQTT_V5, share_group="ota-ingest")


async def publish(broker: Mosquitto, count: int, start: int = 0) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="car-publisher") as car:
        for i in range(start, start + count):
            await car.publish(topics.status_topic(vin(1 + i % 50)), str(i).encode(), qos=topics.QOS)


async def until(check: Callable[[], bool], what: str, within_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_two_replicas_split_the_stream_and_together_get_every_message_once(private_broker: Mosquitto) -> None:
    one, two = Sink(), Sink()
    links = [link(private_broker, "ota-server-r1", one), link(private_broker, "ota-server-r2", two)]
    for each in links:
        await each.start(wait_s=10)
        assert each.connected and each.subscriptions[0] == "$share/ota-ingest/ota/v1/vehicles/+/status"
    try:
        await publish(private_broker, 400)
        await until(lambda: len(one.payloads) + len(two.payloads) >= 400, "400 messages")
        await asyncio.sleep(0.3)  # nothing more arrives: no message went to both
        received = Counter(one.payloads + two.payloads)
        assert set(received) == {str(i).encode() for i in range(400)}
        assert set(received.values()) == {1}
        assert len(one.payloads) >= 100 and len(two.payloads) >= 100  # a share each (round robin: ~half)
    finally:
        for each in links:
            await each.stop()


async def test_unacknowledged_messages_come_back_to_the_replica_after_a_crash(private_broker: Mosquitto) -> None:
    """A replica that never acknowledged (killed before its batch committed) gets them again
    when it reconnects with the same client id; acknowledged ones never come back."""
    crashed = Sink(hold=True)
    first = link(private_broker, "ota-server-r1", crashed)
    await first.start(wait_s=10)
    await publish(private_broker, 30)
    await until(lambda: len(crashed.payloads) == 30, "30 messages")
    for ack in crashed.acks[:10]:  # the first batch was stored
        ack()
    await asyncio.sleep(0.2)
    await first.stop()  # gone without acknowledging the rest

    restarted = Sink(hold=True)
    second = link(private_broker, "ota-server-r1", restarted)
    await second.start(wait_s=10)
    try:
        await until(lambda: len(restarted.payloads) >= 20, "the 20 unacknowledged messages")
        await asyncio.sleep(0.3)
        assert sorted(int(p) for p in restarted.payloads) == list(range(10, 30))
        for ack in restarted.acks:
            ack()
            ack()  # twice is harmless
    finally:
        await second.stop()
