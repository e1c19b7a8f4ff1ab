"""The generated Mosquitto configuration, attacked on a real broker.

"Nothing arrived" is shown with a positive control: after the forbidden message,
an allowed one is sent on the same path; the test waits (bounded) for the control,
and since MQTT keeps one publisher's order, the forbidden one would have come first.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import UTC, datetime

import aiomqtt
import pytest

from firmware_bundles import topics
from firmware_bundles.messages import CampaignNotice, encode
from firmware_bundles.provisioning import write_bundle
from firmware_bundles.report_signing import generate_report_key, private_key_pem
from firmware_bundles.vin import make_vin
from ota_server.infra.pki import CertificateAuthority
from ota_server.mqtt.link import ServerMqttLink, TlsFiles
from ota_server.mqtt.mosquitto_config import acl_text
from tests.transport.conftest import HOST, Broker
from vehicle_agent.config import load_config
from vehicle_agent.link import CarMqttLink, tls_context

A = make_vin("1HG", "CM826", "N", "A", 101)
B = make_vin("1HG", "CM826", "N", "A", 102)
DEADLINE_S = 10.0
Received = list[tuple[str, bytes]]


async def until(client: aiomqtt.Client, topic: str, payload: bytes) -> Received:
    """Every message this client gets up to and including (topic, payload); fails after the deadline."""
    seen: Received = []
    async with asyncio.timeout(DEADLINE_S):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            seen.append((str(message.topic), message.payload))
            if seen[-1] == (topic, payload):
                return seen
    raise AssertionError("unreachable")


def test_the_configuration_has_no_plaintext_listener(broker: Broker) -> None:
    blocks = broker.files.conf.read_text().split("\nlistener ")[1:]
    assert len(blocks) == 1
    for block in blocks:
        for option in ("certfile", "keyfile", "require_certificate true", "use_identity_as_username true"):
            assert option in block
        assert "use_username_as_clientid true" in block
    assert "allow_anonymous false" in broker.files.conf.read_text()
    assert f"pattern read {topics.campaign_topic('%u')}" in acl_text()


# MQTT 3.1.1 CONNECT, clean session, client id "x": the broker answers a welcome client with CONNACK (0x20).
CONNECT = bytes.fromhex("100d00044d5154540402003c000178")
CONNACK_OK = bytes.fromhex("20020000")


def raw_connect(port: int, context: ssl.SSLContext | None) -> bytes:
    """Send CONNECT over a raw (optionally TLS) socket; return what came back ('' = connection closed)."""
    with socket.create_connection((HOST, port), timeout=DEADLINE_S) as sock:
        try:
            conn = sock if context is None else context.wrap_socket(sock, server_hostname=HOST)
            conn.sendall(CONNECT)
            return conn.recv(4)
        except (ssl.SSLError, ConnectionError) as exc:
            return f"refused: {exc}".encode()


def test_plaintext_mqtt_is_refused(broker: Broker) -> None:
    assert raw_connect(broker.port, broker.context("x")) == CONNACK_OK  # the control: TLS with a certificate
    assert not raw_connect(broker.port, None).startswith(b"\x20")


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_tls_without_a_certificate_of_our_ca_is_refused(broker: Broker, who: str) -> None:
    if who == "no certificate":
        context = broker.context(None)
    else:
        context = broker.context(A, ca=CertificateAuthority.create(datetime.now(UTC)))
    answer = raw_connect(broker.port, context)
    assert not answer.startswith(b"\x20"), answer


async def test_a_car_reads_only_its_own_campaign_topic(broker: Broker) -> None:
    async with broker.client(A) as car_a, broker.client(B) as car_b, broker.server_client() as server:
        await car_a.subscribe(topics.campaign_topic(B), qos=1)  # the attack
        await car_a.subscribe(topics.campaign_topic(A), qos=1)
        await car_b.subscribe(topics.campaign_topic(B), qos=1)
        await server.publish(topics.campaign_topic(B), b"for B", qos=1)
        await server.publish(topics.campaign_topic(A), b"control", qos=1)

        assert await until(car_a, topics.campaign_topic(A), b"control") == [(topics.campaign_topic(A), b"control")]
        assert await until(car_b, topics.campaign_topic(B), b"for B") == [(topics.campaign_topic(B), b"for B")]


async def test_a_car_cannot_subscribe_to_everything(broker: Broker) -> None:
    async with broker.client(A) as car_a, broker.client(B) as car_b, broker.server_client() as server:
        await car_a.subscribe("#", qos=1)
        await server.publish(topics.campaign_topic(B), b"for B", qos=1)
        await car_b.publish(topics.status_topic(B), b"B's status", qos=1)
        await car_b.publish(topics.presence_topic(B), b"B online", qos=1)
        await server.publish(topics.campaign_topic(A), b"control", qos=1)

        # B's messages are published before the control, but on other connections; wait for
        # the broker to have routed B's own last message before trusting the absence
        await server.subscribe(topics.PRESENCE_SUBSCRIPTION, qos=1)
        await car_b.publish(topics.presence_topic(B), b"B again", qos=1)
        await until(server, topics.presence_topic(B), b"B again")
        await server.publish(topics.campaign_topic(A), b"control 2", qos=1)

        seen = await until(car_a, topics.campaign_topic(A), b"control 2")
        assert {topic for topic, _ in seen} == {topics.campaign_topic(A)}


async def test_a_car_cannot_publish_as_another(broker: Broker) -> None:
    async with broker.client(A) as car_a, broker.server_client() as server:
        await server.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
        await server.subscribe(topics.PRESENCE_SUBSCRIPTION, qos=1)
        await car_a.publish(topics.status_topic(B), b"forged report", qos=1)
        await car_a.publish(topics.presence_topic(B), b"forged presence", qos=1)
        await car_a.publish(topics.campaign_topic(B), b"forged notice", qos=1)
        await car_a.publish(topics.status_topic(A), b"control", qos=1)

        assert await until(server, topics.status_topic(A), b"control") == [(topics.status_topic(A), b"control")]


async def test_a_car_cannot_take_over_another_cars_client_id(broker: Broker) -> None:
    async with broker.client(B) as car_b, broker.server_client() as server:
        await car_b.subscribe(topics.campaign_topic(B), qos=1)
        await server.subscribe(topics.STATUS_SUBSCRIPTION, qos=1)
        async with broker.client(A, identifier=B) as car_a:  # A claims B's client id
            await car_a.subscribe(topics.campaign_topic(A), qos=1)
            await server.publish(topics.campaign_topic(B), b"for B", qos=1)
            await server.publish(topics.campaign_topic(A), b"for A", qos=1)
            # B is still connected and still B; A's session is A's own
            assert await until(car_b, topics.campaign_topic(B), b"for B") == [(topics.campaign_topic(B), b"for B")]
            assert await until(car_a, topics.campaign_topic(A), b"for A") == [(topics.campaign_topic(A), b"for A")]
            await car_b.publish(topics.status_topic(B), b"B still here", qos=1)
            await until(server, topics.status_topic(B), b"B still here")


async def test_server_and_agent_links_speak_tls_with_their_certificates(broker: Broker, tmp_path: object) -> None:
    """The real links: the server's ServerMqttLink with its client certificate, a car's from its bundle."""
    now = datetime.now(UTC)
    issued = broker.ca.issue_client(A, now)
    key = generate_report_key()
    bundle = write_bundle(
        broker.certs / "car",
        {
            "report_private_key": private_key_pem(key).decode(),
            "ca_certificate": broker.ca.cert_pem.decode(),
            "client_certificate": issued.cert_pem.decode(),
            "client_key": issued.key_pem.decode(),
            "agent_config": {
                "vin": A,
                "ecus": [{"serial": "S1", "hardware_id": "hw", "installed_version": "1.0"}],
                "mqtt_url": f"mqtts://{HOST}:{broker.port}",
                "repo_url": "http://repo.test/repo",
                "image_root": _root(),
                "director_root": _root(),
            },
        },
    )
    config = load_config(bundle)
    presence_seen = asyncio.Event()

    def on_message(topic: str, _payload: bytes, _ack: object) -> None:  # acknowledged by the link
        if topic == topics.presence_topic(A):
            presence_seen.set()

    files = broker.files
    server = ServerMqttLink(
        f"mqtts://{HOST}:{broker.port}",
        on_message,
        client_id="ota-server",
        username="ota-server",
        tls=TlsFiles(files.ca, files.server_cert, files.server_key),
    )
    await server.start(wait_s=DEADLINE_S)
    try:
        assert server.connected
        notice = CampaignNotice(
            campaign_id=1,
            vin=A,
            nonce="n" * 24,
            recall_number="24V-123",
            title="t",
            repo_url="http://repo.test/repo",
            issued_at=now,
        )
        # retained, so the car gets it when it subscribes
        await server.publish(topics.campaign_topic(A), encode(notice), qos=1, retain=True)
        car = CarMqttLink(config.vin, config.mqtt_url, tls_context=tls_context(config))
        notices = car.notices()
        async with asyncio.timeout(DEADLINE_S):
            assert await anext(notices) == notice
            await presence_seen.wait()  # the car's presence reached the server over TLS
        await notices.aclose()
    finally:
        await server.stop()


def _root() -> str:
    from firmware_bundles import uptane

    return uptane.create_root(uptane.RoleSigners.generate(), datetime(2030, 1, 1, tzinfo=UTC)).decode()
