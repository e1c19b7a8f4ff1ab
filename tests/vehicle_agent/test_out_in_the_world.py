"""Out in the world: weeks offline, broker restarts, notices published while a car was away."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import statistics
import uuid
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest

from firmware_bundles import topics
from firmware_bundles.messages import CampaignNotice, FailureReason, ReportState, encode
from firmware_bundles.vin import make_vin
from vehicle_agent.config import MqttOptions
from vehicle_agent.link import CarMqttLink, parse_mqtt_url

from .conftest import Car
from .fakes import HW, SERIAL, FakeServer

S = ReportState


async def test_a_car_offline_for_weeks_recovers_from_expired_metadata(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    assert await car.agent.handle(server.notice(1)) is S.REMEDIED

    # Weeks pass with the car parked: everything it cached is now past its expiry date,
    # and the repositories still serve those same (expired) files.
    weeks_ago = server.now - timedelta(days=30)
    metadata = car.state_dir / "metadata"
    expired = {
        metadata / "image": server.publish_image(now=weeks_ago),
        metadata / "director": server.assign({SERIAL: server.image_targets[f"bundles/{HW}/2.0.otab"]}, now=weeks_ago),
    }
    for directory, files in expired.items():
        for name, data in files.items():
            (directory / name).write_bytes(data)
    assert await car.agent.handle(server.notice(2)) is S.FAILED
    assert car.link.reports[-1].reason is FailureReason.METADATA_EXPIRED
    assert car.running_version() == "2.0"

    # The repositories re-sign with fresh dates and a new campaign arrives: no one touches the car.
    server.assign({SERIAL: server.release("3.0", 3)})
    assert await car.agent.handle(server.notice(3)) is S.REMEDIED
    assert car.running_version() == "3.0"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Stop(Exception):
    pass


async def _reconnect_delays(seed: int, port: int, count: int) -> list[float]:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == count:
            raise _Stop

    vin = make_vin("1HG", "CM826", "R", "A", seed)
    options = MqttOptions(backoff_min=1.0, backoff_max=8.0)
    link = CarMqttLink(vin, f"mqtt://127.0.0.1:{port}", options, sleep=sleep, rng=random.Random(seed))
    with pytest.raises(_Stop):
        async for _notice in link.notices():
            pass
    return delays


async def test_reconnects_back_off_with_jitter_up_to_the_cap() -> None:
    """A broker restart must not bring the whole fleet back in the same second."""
    port = _closed_port()
    fleet = [await _reconnect_delays(seed, port, 8) for seed in range(12)]
    for delays in fleet:
        assert all(0.5 <= d <= 8.0 for d in delays)  # at least half the minimum, never past the cap
    # the later waits of different cars are spread over the window, not bunched
    late = [delays[-1] for delays in fleet]
    assert len({round(d, 6) for d in late}) == len(late)
    assert max(late) - min(late) > 2.0
    assert statistics.pstdev(late) > 1.0
    # and the window grows: early waits are short, later ones may be long
    assert max(delays[0] for delays in fleet) <= 2.0


def _notice(vin: str, campaign_id: int) -> CampaignNotice:
    return CampaignNotice(
        campaign_id=campaign_id,
        vin=vin,
        nonce=secrets.token_urlsafe(16),
        recall_number="24V-777",
        title="t",
        repo_url="http://127.0.0.1:1/repo",
        issued_at=datetime.now(UTC),
    )


async def test_a_notice_published_while_the_car_was_offline_arrives_when_it_returns(mosquitto_url: str) -> None:
    vin = make_vin("1HG", "CM826", "R", "A", secrets.randbelow(10**6))
    host, port, _tls = parse_mqtt_url(mosquitto_url)
    link = CarMqttLink(vin, mosquitto_url, MqttOptions(backoff_min=0.05, backoff_max=0.2))
    async with asyncio.timeout(30), aiomqtt.Client(host, port, identifier=f"test-{uuid.uuid4().hex}") as server:
        try:
            # the car connects once (its persistent session and subscription now exist) and leaves
            connected = asyncio.Event()

            async def on_connect() -> None:
                connected.set()

            link.on_connect = on_connect
            notices = link.notices()
            first = asyncio.ensure_future(anext(notices))
            await connected.wait()
            first.cancel()
            with pytest.raises((asyncio.CancelledError, StopAsyncIteration)):
                await first
            await notices.aclose()
            assert not link.connected

            published = _notice(vin, 41)
            await server.publish(topics.campaign_topic(vin), encode(published), qos=1, retain=True)

            notices = link.notices()
            received = await anext(notices)
            assert (received.campaign_id, received.nonce) == (41, published.nonce)
            await notices.aclose()
        finally:
            await server.publish(topics.campaign_topic(vin), b"", qos=1, retain=True)
            await server.publish(topics.presence_topic(vin), b"", qos=1, retain=True)
