"""A stolen car certificate must not take a share of the server's report stream (issue 15, item 1).

Mosquitto 2.0's ``acl_file`` never checks SUBSCRIBE (``security_default.c``: "FIXME -
implement ACL subscription strings"); it checks ``read`` only when it delivers. A car may
therefore join ``$share/<group>/ota/v1/vehicles/+/status``: the broker hands it every
other report, the read check then drops it, and the sending car still gets its PUBACK.
The generated configuration's answer is a share group nobody outside the server knows.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from firmware_bundles import topics
from firmware_bundles.vin import make_vin
from ota_server.mqtt.link import OnMessage, ServerMqttLink, TlsFiles, shared
from ota_server.mqtt.mosquitto_config import write_broker_config
from tests.transport.conftest import HOST, Broker

A = make_vin("1HG", "CM826", "N", "A", 201)
B = make_vin("1HG", "CM826", "N", "A", 202)
REPORTS = 20
DEADLINE_S = 10.0
# The group every deployment would pick from the docs (and any car can read the docs).
PUBLIC_GROUPS = ("ota-ingest", "ota", "server", "ingest")


def _server_link(broker: Broker, on_message: OnMessage) -> ServerMqttLink:
    files = broker.files
    return ServerMqttLink(
        f"mqtts://{HOST}:{broker.port}",
        on_message,
        client_id="ota-server",
        username="ota-server",
        tls=TlsFiles(files.ca, files.server_cert, files.server_key),
        version=5,
        share_group=files.replica_env()["OTA_MQTT_SHARE_GROUP"],
    )


def _car(broker: Broker, vin: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        HOST,
        broker.port,
        identifier=vin,
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=broker.context(vin),
        timeout=DEADLINE_S,
    )


async def test_a_car_in_the_share_group_takes_no_report_from_the_server(broker: Broker) -> None:
    received: list[bytes] = []
    all_in = asyncio.Event()

    def on_message(topic: str, payload: bytes, _ack: object) -> bool:
        if topic == topics.status_topic(B):
            received.append(payload)
            if len(received) == REPORTS:
                all_in.set()
        return False  # the link acknowledges at once

    server = _server_link(broker, on_message)
    await server.start(wait_s=DEADLINE_S)
    try:
        async with _car(broker, A) as thief, _car(broker, B) as sender:
            # the attack: join every share group a car could know or guess, plainly too
            for group in PUBLIC_GROUPS:
                await thief.subscribe(shared(group, topics.STATUS_SUBSCRIPTION), qos=1)
            await thief.subscribe(shared(PUBLIC_GROUPS[0], "#"), qos=1)
            await thief.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
            for n in range(REPORTS):
                await sender.publish(topics.status_topic(B), f"report {n}".encode(), qos=1)
            with contextlib.suppress(TimeoutError):  # bounded; the assertion says what came
                async with asyncio.timeout(DEADLINE_S):
                    await all_in.wait()
        assert received == [f"report {n}".encode() for n in range(REPORTS)]
    finally:
        await server.stop()


def test_each_configuration_gets_its_own_unguessable_share_group(broker: Broker, tmp_path: Path) -> None:
    group = broker.files.replica_env()["OTA_MQTT_SHARE_GROUP"]
    assert group not in PUBLIC_GROUPS
    assert len(group) >= 32 and not any(c in group for c in "/+#")
    other = write_broker_config(tmp_path / "other", broker.ca, datetime.now(UTC), hostnames=[HOST], persistence=False)
    assert other.share_group != group
    # written again in the same place: the same group (the replicas keep splitting one stream)
    again = write_broker_config(tmp_path / "other", broker.ca, datetime.now(UTC), hostnames=[HOST], persistence=False)
    assert again.share_group == other.share_group
