"""Where the real PostgreSQL and Mosquitto are, and whether a test may skip without them.

With ``OTA_REQUIRE_SERVICES=1`` (set by .ci/run) a missing service fails the test
instead of skipping it, so CI can never go green on skipped integration tests.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_HOST = os.environ.get("OTA_TEST_PG_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("OTA_TEST_PG_PORT", "5432"))
POSTGRES_ADMIN_DB = os.environ.get("OTA_TEST_PG_DB", "test")
MOSQUITTO_HOST = os.environ.get("OTA_TEST_MQTT_HOST", "127.0.0.1")
MOSQUITTO_PORT = int(os.environ.get("OTA_TEST_MQTT_PORT", "1883"))


def required() -> bool:
    return os.environ.get("OTA_REQUIRE_SERVICES", "") not in ("", "0", "false")


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(name: str, host: str, port: int) -> None:
    if reachable(host, port):
        return
    message = f"{name} not reachable at {host}:{port}"
    if required():
        pytest.fail(f"{message} and OTA_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


def mosquitto_url() -> str:
    need("Mosquitto", MOSQUITTO_HOST, MOSQUITTO_PORT)
    return f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}"


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database for one test (dropped afterwards); yields its SQLAlchemy URL."""
    need("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    import psycopg

    name = f"ota_test_{uuid.uuid4().hex[:12]}"
    admin = f"host={POSTGRES_HOST} port={POSTGRES_PORT} dbname={POSTGRES_ADMIN_DB} user=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
