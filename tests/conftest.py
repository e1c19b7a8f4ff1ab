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
WHEEL_BUILDS_GROUP = "wheel-builds"  # tests/packaging builds the same projects' wheels


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): each module stays on
    one worker, so its module-scoped fixtures (a built venv, a browser) are made once, and every test
    that uses the machine's one Mosquitto is on the same worker, so no two of them share its topics
    and retained messages at the same time; the packaging tests, which build the same wheels, too."""
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if "mosquitto_url" in getattr(item, "fixturenames", ()):
            group = SHARED_BROKER_GROUP
        elif module.startswith("tests/packaging/"):
            group = WHEEL_BUILDS_GROUP
        else:
            group = module
        item.add_marker(pytest.mark.xdist_group(group))
