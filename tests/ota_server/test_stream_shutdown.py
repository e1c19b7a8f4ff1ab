"""Stopping the real server while a dashboard holds a server-sent event stream open."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from ota_server.config import Settings
from ota_server.http.server import OtaServer
from ota_server.mqtt.publisher import FakePublisher
from ota_server.web.sse import EventStreams, snapshot_events
from tests.ota_server.conftest import bearer
from tests.ota_server.helpers import launched, vin

SAFETY_WAIT_S = 60  # only so a hang fails the test instead of stalling the run; nothing is timed


async def test_stopping_ends_open_event_streams_and_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, port=0, scheduler_interval_s=0, scheduler_report_gap_s=0)
    server = OtaServer(settings, publisher=FakePublisher())
    info = await server.start()
    token = settings.admin_token_file.read_text().strip()
    received: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=info.api_url, headers=bearer(token), timeout=SAFETY_WAIT_S) as client:
            campaign_id = (await launched(client, [vin(1)]))["id"]
            async with client.stream("GET", f"/api/v1/campaigns/{campaign_id}/stream") as stream:
                chunks = stream.aiter_text()
                while "event: snapshot" not in "".join(received):
                    received.append(await anext(chunks))
                caplog.clear()
                with caplog.at_level(logging.INFO):
                    stopping = asyncio.create_task(server.stop())
                    # The stream ends (the browser's EventSource reconnects to whoever serves next).
                    received.extend([chunk async for chunk in chunks])
                    await asyncio.wait_for(stopping, SAFETY_WAIT_S)
    finally:
        await server.stop()
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]
    assert not any("timeout graceful shutdown" in record.getMessage() for record in caplog.records)
    assert "Application shutdown complete." in caplog.text


async def test_a_stream_asleep_between_polls_ends_as_soon_as_the_streams_are_closed() -> None:
    streams = EventStreams()

    async def fingerprint() -> object:
        return 1

    async def snapshot() -> str:
        return "{}"

    async def connected() -> bool:
        return False

    events = snapshot_events(
        fingerprint, snapshot, connected, interval=3600, sleep=streams.sleep, closing=streams.closing
    )
    assert await anext(events) == "retry: 2000\n\n"
    assert (await anext(events)).startswith("event: snapshot")
    rest = asyncio.create_task(anext(events, None))  # asleep for the hour between polls
    await asyncio.sleep(0)
    assert not rest.done()
    streams.close_all()
    assert await asyncio.wait_for(rest, SAFETY_WAIT_S) is None  # ended, not a heartbeat an hour later
