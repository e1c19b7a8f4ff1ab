"""Shared fixtures: real services (PostgreSQL, Mosquitto) when reachable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with services.fresh_postgres_database() as url:
        yield url


@pytest.fixture
def mosquitto_url() -> str:
    return services.mosquitto_url()
