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


SHARED_BROKER_GROUP = "shared-mosquitto"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): each module stays on
    one worker, so its module-scoped fixtures (a built venv, a browser) are made once, and every test
    that uses the machine's one Mosquitto is on the same worker, so no two of them share its topics
    and retained messages at the same time."""
    for item in items:
        uses_shared_broker = "mosquitto_url" in getattr(item, "fixturenames", ())
        group = SHARED_BROKER_GROUP if uses_shared_broker else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
