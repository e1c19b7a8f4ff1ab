"""The server in-process: SQLite in tmp_path, a FakePublisher, simulated time, no broker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from firmware_bundles.messages import CampaignNotice, parse_campaign_message
from ota_server.config import Settings
from ota_server.http.app import create_app, runtime_of
from ota_server.mqtt.publisher import FakePublisher
from ota_server.runtime import Runtime
from tests.ota_server.helpers import REPORT_KEYS, FakeClock

# A decoded JSON object as a test reads it: the keys are strings, the values are whatever the
# server sent (Any, as httpx's Response.json() gives), which the test's asserts then check.
JsonObject = dict[str, Any]


@dataclass
class Env:
    app: FastAPI
    client: httpx.AsyncClient
    publisher: FakePublisher
    clock: FakeClock

    @property
    def runtime(self) -> Runtime:
        return runtime_of(self.app)

    async def inject(self, *messages: tuple[str, bytes]) -> None:
        """Deliver MQTT messages as the link would, and wait until they are stored and ticked on."""
        for topic, payload in messages:
            self.runtime.ingestor.submit(topic, payload)
        await self.runtime.ingestor.flush()
        await self.runtime.coordinator.idle()  # ingest asks for a tick and goes on; wait for it here
        await self.runtime.dispatcher.idle()  # ... and for the notices it sent (encoded off the loop first)

    async def nonces(self) -> dict[str, str]:
        """VIN -> nonce, read from the published notices (as a car would)."""
        await self.runtime.dispatcher.idle()
        messages = (parse_campaign_message(m.payload) for m in self.publisher.messages)
        return {n.vin: n.nonce for n in messages if isinstance(n, CampaignNotice)}

    async def tick(self) -> None:
        """One scheduler tick at the clock's time, then wait until its notices are published."""
        await self.runtime.coordinator.tick()
        await self.runtime.dispatcher.idle()

    async def headers_for(self, name: str, role: str) -> dict[str, str]:
        """Create a token for another person (as the admin); the headers to act as them."""
        resp = await self.client.post("/api/v1/tokens", json={"name": name, "role": role})
        assert resp.status_code == 201, resp.text
        return bearer(resp.json()["token"])

    async def get_json(self, url: str) -> JsonObject:
        """GET a page that answers one JSON object (asserting the 200 and the object)."""
        resp = await self.client.get(url)
        assert resp.status_code == 200, resp.text
        body = json.loads(resp.content)
        assert isinstance(body, dict), body
        return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    # No periodic scheduler tick: tests tick explicitly (ingest and launches still tick). No signing
    # processes (each server would start two): tests/ota_server/test_signing_pool.py tests them.
    base = Settings(
        data_dir=data_dir,
        public_url="http://ota.test",
        scheduler_interval_s=0,
        scheduler_report_gap_s=0,
        director_signing_processes=0,
    )
    return base.with_overrides(**overrides)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Env]:
    REPORT_KEYS.clear()  # keys belong to one server's database
    publisher = FakePublisher()
    clock = FakeClock()
    app = create_app(settings, publisher=publisher, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = bearer(settings.admin_token_file.read_text().strip())  # the bootstrap admin
        async with httpx.AsyncClient(transport=transport, base_url="http://ota.test", headers=headers) as client:
            yield Env(app, client, publisher, clock)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    async with running(settings) as env:
        yield env


@pytest.fixture
async def slow_env(tmp_path: Path) -> AsyncIterator[Env]:
    """A car may send 4 steps at once, then one a second (its token bucket, on the injected clock)."""
    async with running(make_settings(tmp_path, ingest_vin_rate_per_s=1.0, ingest_vin_burst=4)) as env:
        yield env


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def either_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    """The server on SQLite, then on a fresh PostgreSQL database: for what must behave alike on both."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    settings = make_settings(tmp_path) if url is None else make_settings(tmp_path, database_url=url)
    async with running(settings) as env:
        yield env
