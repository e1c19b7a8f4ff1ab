"""Fixtures for the multi-replica tests: a private Mosquitto, a whole cluster.

They need ``/usr/sbin/mosquitto`` and the PostgreSQL of ``tests/services.py``; with
``OTA_REQUIRE_SERVICES=1`` a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from ota_server.mqtt.link import MQTT_V5, ServerMqttLink
from simulator.cluster import MOSQUITTO, Cluster, Mosquitto
from tests import services
from tests.ota_server.conftest import Env


def need_mosquitto_binary() -> None:
    if os.access(MOSQUITTO, os.X_OK):
        return
    message = f"no Mosquitto binary at {MOSQUITTO}"
    if services.required():
        pytest.fail(f"{message} and OTA_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    need_mosquitto_binary()
    with Mosquitto(tmp_path / "broker") as broker:
        yield broker


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    need_mosquitto_binary()
    services.need("PostgreSQL", services.POSTGRES_HOST, services.POSTGRES_PORT)
    with Cluster(tmp_path / "cluster", replicas=2) as running:
        yield running


@asynccontextmanager
async def listening(env: Env, broker: Mosquitto) -> AsyncIterator[ServerMqttLink]:
    """``env``'s ingest subscribed to ``broker`` as one replica of a shared group would be."""
    link = ServerMqttLink(
        broker.url,
        env.runtime.ingestor.submit,
        client_id="ota-server-r1",
        username="ota-server",
        version=MQTT_V5,
        share_group="ota-ingest",
    )
    await link.start(wait_s=10)
    try:
        yield link
    finally:
        await link.stop()
