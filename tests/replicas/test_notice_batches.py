"""A batch of notices through the link's bulk path (issue 19), against a real Mosquitto.

``ServerMqttLink.publish_many`` sends a launch's notices straight through paho, at most
``in_flight`` unacknowledged at once, and says per message whether the broker acknowledged it;
it never raises, so the dispatcher retries the rest one by one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import aiomqtt
import pytest

from ota_server.errors import NotReady
from ota_server.mqtt.link import MQTT_V5, Refused, ServerMqttLink
from simulator.cluster import Mosquitto

TOPIC = "ota/test/notices"


def _link(broker: Mosquitto, *, connect_timeout_s: float = 30.0) -> ServerMqttLink:
    return ServerMqttLink(
        broker.url,
        lambda topic, payload, ack: False,
        client_id="ota-server-batches",
        username="ota-server",
        version=MQTT_V5,
        connect_timeout_s=connect_timeout_s,
    )


async def _retained(broker: Mosquitto, expected: int) -> dict[str, bytes]:
    """Every retained message under TOPIC, as a car connecting now would get it."""
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="ota-test-reader") as reader:
        await reader.subscribe(f"{TOPIC}/#", qos=1)
        async with asyncio.timeout(30):
            async for message in reader.messages:
                seen[str(message.topic)] = bytes(message.payload)
                if len(seen) == expected:
                    break
    return seen


async def test_a_batch_larger_than_its_window_is_acknowledged_message_by_message(
    private_broker: Mosquitto,
) -> None:
    link = _link(private_broker)
    await link.start(wait_s=10)
    try:
        messages = [(f"{TOPIC}/{n}", f"notice {n}".encode()) for n in range(3000)]
        done = await link.publish_many(messages, qos=1, retain=True, in_flight=100)
    finally:
        await link.stop()
    assert done == [True] * 3000
    assert await _retained(private_broker, 3000) == dict(messages)


async def test_a_batch_the_broker_stops_acknowledging_comes_back_unacknowledged_after_the_timeout(
    private_broker: Mosquitto,
) -> None:
    """The broker frozen (SIGSTOP) under a connected link: the messages are sent, no PUBACK comes."""
    link = _link(private_broker, connect_timeout_s=1.0)
    await link.start(wait_s=10)
    process = private_broker._proc
    assert process is not None
    try:
        os.kill(process.pid, signal.SIGSTOP)
        try:
            messages = [(f"{TOPIC}/{n}", b"notice") for n in range(500)]
            done = await asyncio.wait_for(link.publish_many(messages, qos=1, retain=True, in_flight=100), 30)
            assert link.connected  # the session never dropped: the stall timeout gave up, not the link
        finally:
            os.kill(process.pid, signal.SIGCONT)
    finally:
        await link.stop()
    assert done == [False] * 500  # nothing acknowledged: the dispatcher retries every one


async def test_a_batch_whose_broker_is_gone_comes_back_unacknowledged_without_raising(
    private_broker: Mosquitto,
) -> None:
    link = _link(private_broker, connect_timeout_s=2.0)
    await link.start(wait_s=10)
    try:
        private_broker.stop()
        for _ in range(600):  # the link notices within its keepalive at most
            if not link.connected:
                break
            await asyncio.sleep(0.05)
        assert not link.connected
        messages = [(f"{TOPIC}/{n}", b"notice") for n in range(500)]
        done = await asyncio.wait_for(link.publish_many(messages, qos=1, retain=True, in_flight=100), 30)
    finally:
        await link.stop()
    assert done == [False] * 500  # nothing acknowledged: the dispatcher retries every one


async def test_a_link_not_connected_acknowledges_nothing_at_once(private_broker: Mosquitto) -> None:
    link = _link(private_broker)  # never started
    done = await asyncio.wait_for(link.publish_many([(f"{TOPIC}/1", b"x")], qos=1, retain=True, in_flight=10), 5)
    assert done == [False]


async def test_a_message_the_broker_refuses_is_not_counted_as_published(
    private_broker: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found from outside: paho and aiomqtt mark a QoS 1 publish done at its PUBACK whatever the PUBACK
    says, so notices a broker refused (here its ACL; a quota or a topic it rejects elsewhere) were
    recorded as published and never sent again. A refused message now counts as not published: the
    bulk path says False for it and logs why (the dispatcher retries it, and leaves it unpublished for
    the next start), and a single publish raises ``Refused`` with the broker's reason."""
    acl = tmp_path / "acl"
    acl.write_text(f"pattern readwrite {TOPIC}/allowed/#\n")  # every client, named or not
    private_broker.stop()
    private_broker.extra = f"acl_file {acl}"
    private_broker.start()
    link = _link(private_broker)
    await link.start(wait_s=10)
    try:
        allowed = [(f"{TOPIC}/allowed/{n}", b"notice") for n in range(3)]
        assert await link.publish_many(allowed, qos=1, retain=True, in_flight=2) == [True] * 3
        await link.publish(f"{TOPIC}/allowed/single", b"notice", qos=1, retain=True)
        with caplog.at_level(logging.WARNING, logger="ota_server.mqtt.link"):
            denied = await link.publish_many([(f"{TOPIC}/denied/1", b"notice")], qos=1, retain=True, in_flight=2)
        assert denied == [False]
        assert "the broker refused 1 of 1 messages: Not authorized" in caplog.text
        # This Mosquitto drops a session after a refusal: the single publish is tried as the dispatcher
        # retries, until the link is back and the broker answers.
        async with asyncio.timeout(30):
            while True:
                try:
                    await link.publish(f"{TOPIC}/denied/2", b"notice", qos=1, retain=True)
                except Refused as refused:
                    assert "refused by the broker: Not authorized" in str(refused)
                    break
                except NotReady:
                    await asyncio.sleep(0.2)
    finally:
        await link.stop()
    assert await _retained(private_broker, 4) == dict([*allowed, (f"{TOPIC}/allowed/single", b"notice")])
