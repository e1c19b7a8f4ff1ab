"""Fixtures for the multi-replica tests: a private Mosquitto, a whole cluster.

They need ``/usr/sbin/mosquitto`` and the PostgreSQL of ``tests/services.py``; with
``OTA_REQUIRE_SERVICES=1`` a missing one fails the test instead of skipping it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.cluster import MOSQUITTO, Cluster, Mosquitto
from tests import services


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
