"""A real server process (embedded broker and SQLite unless the test says otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.operator_client import OperatorClient
from simulator.scenario import second_person
from simulator.server_process import ServerEndpoints, ServerProcess


@dataclass
class Stack:
    data_dir: Path
    endpoints: ServerEndpoints
    client: OperatorClient  # the bootstrap admin (files and requests launches)
    server: ServerProcess
    approver: OperatorClient  # a second person, for safety recalls
    token: str  # the admin token, for child processes (ota-sim, vehicle-agent init)


@pytest.fixture
def embedded_stack(tmp_path: Path) -> Iterator[Stack]:
    server = ServerProcess(tmp_path / "server", env=_without_service_urls())
    with (
        server as endpoints,
        OperatorClient(endpoints.api_url, token=server.admin_token()) as client,
        second_person(client, "safety-officer") as approver,
    ):
        yield Stack(tmp_path / "server", endpoints, client, server, approver, server.admin_token())


def _without_service_urls() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
