"""Bundles handed out by URL: the server redirects /repo/targets/... to an untrusted store.

A real ``ota serve`` (embedded broker, SQLite) with ``OTA_BUNDLE_URL_PREFIX`` pointing at a
plain HTTP server that holds copies of the bundle files (as the sync job fills the bucket).
Cars install through the redirect; when the store's bytes are tampered with, the cars refuse
them (``hash_mismatch``) and nothing is installed.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator.fleet import make_fleet
from simulator.operator_client import OperatorClient
from simulator.runner import InProcessFleet
from simulator.scenario import ScenarioOptions, run_recall, second_person
from simulator.server_process import ServerProcess


class Store:
    """A plain HTTP file server on 127.0.0.1 (a stand-in for a public MinIO bucket)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        store = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                store.requests.append(self.path)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/ota-bundles"

    def sync(self, bundles: Path, *, tamper: bool = False) -> None:
        """What ``mc mirror`` does in docker-compose: copy the content-addressed files over."""
        bucket = self.root / "ota-bundles"
        bucket.mkdir(parents=True, exist_ok=True)
        for file in bundles.iterdir():
            data = file.read_bytes()
            if tamper:
                data = data[:-64] + bytes(b ^ 0xFF for b in data[-64:])
            (bucket / file.name).write_bytes(data)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "store")
    store.root.mkdir()
    store.thread.start()
    yield store
    store.server.shutdown()


class SyncingFleet(InProcessFleet):
    """Syncs the store right before the cars start (after the scenario uploaded the releases)."""

    def __init__(self, state_dir: Path, store: Store, bundles: Path, tamper: bool) -> None:
        super().__init__(state_dir)
        self._sync = functools.partial(store.sync, bundles, tamper=tamper)

    def start(self, fleet: Any, agent_configs: list[dict[str, Any]]) -> None:
        self._sync()
        super().start(fleet, agent_configs)


def test_cars_install_through_the_redirect_and_refuse_tampered_bytes(tmp_path: Path, store: Store) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    env["OTA_BUNDLE_URL_PREFIX"] = store.url
    server = ServerProcess(tmp_path / "server", env=env)
    bundles = tmp_path / "server" / "bundles"
    with server as endpoints, OperatorClient(endpoints.api_url, token=server.admin_token()) as client:
        with second_person(client, "safety-officer") as approver:
            honest = run_recall(
                client,
                make_fleet(6),
                SyncingFleet(tmp_path / "cars-1", store, bundles, tamper=False),
                ScenarioOptions(timeout=120),
                None,
                approver=approver,
            )
            assert (honest.remedied, honest.failed) == (6, 0)
            fetched = {path.rsplit("/", 1)[-1] for path in store.requests if path.startswith("/ota-bundles/")}
            assert fetched and fetched <= {f.name for f in bundles.iterdir()}  # via the redirect only

            shutil.rmtree(store.root / "ota-bundles")
            tampered = run_recall(
                client,
                make_fleet(4),
                SyncingFleet(tmp_path / "cars-2", store, bundles, tamper=True),
                ScenarioOptions(timeout=120),
                None,
                approver=approver,
            )
        assert (tampered.remedied, tampered.failed) == (0, 4)
        assert set(tampered.failures_by_reason) == {"hash_mismatch"}
        # a target the server does not know is not redirected: the server answers it itself
        answer = httpx.get(f"{endpoints.repo_url}/targets/nonexistent.otab")
        assert answer.status_code == 404
