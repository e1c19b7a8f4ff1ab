"""A real server process (embedded broker and SQLite unless the test says otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.operator_client import OperatorClient
from simulator.server_process import ServerEndpoints, ServerProcess


@dataclass
class Stack:
    data_dir: Path
    endpoints: ServerEndpoints
    client: OperatorClient
    server: ServerProcess


@pytest.fixture
def embedded_stack(tmp_path: Path) -> Iterator[Stack]:
    server = ServerProcess(tmp_path / "server", env=_without_service_urls())
    with server as endpoints, OperatorClient(endpoints.api_url) as client:
        yield Stack(tmp_path / "server", endpoints, client, server)


def _without_service_urls() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
