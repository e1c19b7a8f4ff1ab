"""The httpx transport (over httpx.MockTransport) and the TUF fetcher adapter."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tuf.api import exceptions as tuf_exceptions

from firmware_bundles.messages import ReportState
from vehicle_agent.agent import Agent
from vehicle_agent.errors import FetchError
from vehicle_agent.link import FakeLink
from vehicle_agent.transport import HttpxTransport, MemoryTransport, TufFetcher

from .fakes import SERIAL, VIN, FakeServer


def serve(files: MemoryTransport) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = files.files.get(str(request.url))
        if not isinstance(body, bytes):
            return httpx.Response(404)
        return httpx.Response(200, content=body)

    return httpx.MockTransport(handler)


def test_httpx_transport_streams_and_reports_status() -> None:
    files = MemoryTransport({"http://h.test/a": b"x" * 100_000})
    with httpx.Client(transport=serve(files)) as client:
        transport = HttpxTransport(client, chunk_size=4096)
        with transport.stream("http://h.test/a") as chunks:
            assert b"".join(chunks) == b"x" * 100_000
        with pytest.raises(FetchError) as info, transport.stream("http://h.test/missing") as chunks:
            list(chunks)
        assert info.value.status == 404


def test_tuf_fetcher_maps_errors_to_tuf_types() -> None:
    files = MemoryTransport({"http://h.test/a": b"abc"})
    fetcher = TufFetcher(files)
    assert fetcher.download_bytes("http://h.test/a", 10) == b"abc"
    with pytest.raises(tuf_exceptions.DownloadHTTPError) as info:
        fetcher.download_bytes("http://h.test/2.root.json", 10)
    assert info.value.status_code == 404
    with pytest.raises(tuf_exceptions.DownloadLengthMismatchError):
        fetcher.download_bytes("http://h.test/a", 2)
    files.offline = True
    with pytest.raises(tuf_exceptions.DownloadError):
        fetcher.download_bytes("http://h.test/a", 10)


async def test_agent_over_a_shared_httpx_client(server: FakeServer, tmp_path: Path) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    with httpx.Client(transport=serve(server.transport)) as client:
        shared = HttpxTransport(client)
        agents = [Agent(server.agent_config(tmp_path / str(i)), link=FakeLink(VIN), transport=shared) for i in range(3)]
        for agent in agents:
            assert await agent.handle(server.notice()) is ReportState.REMEDIED
