"""The repository's server goes away for a while (a restart, a database outage): the car waits it out.

Answers of 503 (the server's database is down) and connection errors are transient: the
agent asks again after a short, growing backoff for up to ``[download] outage_patience``
seconds, in simulated time here, instead of failing the campaign with
``metadata_fetch_failed`` and waiting for the server's retry many minutes later. A fatal
answer (404: nothing signed for this car) still fails at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from firmware_bundles.messages import FailureReason, ReportState
from vehicle_agent.errors import FetchError
from vehicle_agent.transport import Chunks, MemoryTransport

from .conftest import Car, SimTime
from .fakes import SERIAL, FakeServer

S = ReportState
R = FailureReason


class Outage:
    """The served repository, but answering ``status`` (None: no connection) until simulated time ``until``."""

    def __init__(self, inner: MemoryTransport, time: SimTime, until: float, status: int | None = 503) -> None:
        self._inner = inner
        self._time = time
        self.until = until
        self._status = status
        self.refused = 0

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        if self._time.now < self.until:
            self.refused += 1
            detail = f"HTTP {self._status}" if self._status else "ConnectError: connection refused"
            raise FetchError(url, detail, self._status)
        with self._inner.stream(url, start=start) as chunks:
            yield chunks


async def test_a_30_s_database_outage_503_is_waited_out(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    outage = Outage(server.transport, car.time, until=30.0)
    car.build(transport=outage)
    assert await car.agent.handle(server.notice()) is S.REMEDIED
    assert outage.refused >= 2 and car.running_version() == "2.0"
    assert all(r.reason is None for r in car.link.reports)  # nothing failed on the way
    assert car.time.slept[0] <= 5.0  # the first retry comes soon
    assert car.time.now < 30.0 + 60.0  # and the last one soon after the server came back


async def test_a_server_restart_refusing_connections_is_waited_out(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    car.build(transport=Outage(server.transport, car.time, until=45.0, status=None))
    assert await car.agent.handle(server.notice()) is S.REMEDIED
    assert car.running_version() == "2.0"


async def test_an_outage_longer_than_the_patience_fails_the_campaign(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    patience = car.agent.config.download.outage_patience
    car.build(transport=Outage(server.transport, car.time, until=10 * patience))
    assert await car.agent.handle(server.notice()) is S.FAILED
    last = car.link.reports[-1]
    assert last.reason is R.METADATA_FETCH_FAILED and "503" in last.detail
    assert patience / 2 <= car.time.now <= patience  # waited, but never past the patience
    car.assert_untouched()


async def test_the_patience_is_configurable(car: Car, server: FakeServer) -> None:
    server.assign({SERIAL: server.release("2.0", 2)})
    config = car.agent.config
    patient = replace(config, download=replace(config.download, outage_patience=20.0))
    car.build(config=patient, transport=Outage(server.transport, car.time, until=10**6))
    assert await car.agent.handle(server.notice()) is S.FAILED
    assert car.time.now <= 20.0


async def test_a_fatal_answer_still_fails_at_once(car: Car, server: FakeServer) -> None:
    """404 for the car's timestamp (nothing signed for it): no waiting out, failed after the usual few tries."""
    server.assign({SERIAL: server.release("2.0", 2)})
    car.build(transport=Outage(server.transport, car.time, until=10**6, status=404))
    assert await car.agent.handle(server.notice()) is S.FAILED
    assert car.link.reports[-1].reason is R.METADATA_FETCH_FAILED
    assert car.time.now <= 15.0  # the two quick retries of before, not the outage patience
