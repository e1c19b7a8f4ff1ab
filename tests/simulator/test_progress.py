"""Watching the campaign through a server that goes away for a while: the cars keep running, the watch waits.

A fake progress source on simulated time: the server answers, then cannot be reached (or
answers 5xx, as while it restarts) for a while, then answers again.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from simulator.cli import app
from simulator.errors import ServerError, ServerUnavailable
from simulator.operator_client import OperatorClient
from simulator.progress import DEFAULT_SERVER_PATIENCE_S, watch_campaign

POPULATION = 10


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FlakyServer:
    """Progress that moves with the clock; unreachable from ``down_at`` to ``up_at`` (simulated seconds)."""

    def __init__(self, clock: Clock, down_at: float, up_at: float, error: ServerError | None = None) -> None:
        self.clock, self.down_at, self.up_at = clock, down_at, up_at
        self.error = error or ServerUnavailable("GET /api/v1/campaigns/1/progress: cannot reach the server: refused")
        self.answers = 0
        self.refusals = 0

    def __call__(self) -> dict[str, Any]:
        if self.down_at <= self.clock.now < self.up_at:
            self.refusals += 1
            raise self.error
        self.answers += 1
        remedied = min(POPULATION, int(self.clock.now / 10))  # one car every 10 s: done at 100 s
        counts = {"remedied": remedied, "downloading": POPULATION - remedied}
        return {"population": POPULATION, "counts": counts, "done": remedied == POPULATION}


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200), out


def test_a_server_restart_is_waited_out_and_said() -> None:
    clock = Clock()
    server = FlakyServer(clock, down_at=1.0, up_at=41.0)
    console, out = _console()
    outcome = watch_campaign(
        server, timeout=600, console=console, poll_seconds=0.5, clock=clock, sleep=clock.sleep, server_patience=120
    )
    assert (outcome.remedied, outcome.failed) == (POPULATION, 0)
    assert 3 <= server.refusals < 20  # backed off: 40 s at the 0.5 s poll rate would be 80 refusals
    said = out.getvalue()
    assert "cannot reach the server" in said and "120" in said  # what happened, and the limit
    assert "answering again" in said


def test_an_outage_past_the_patience_gives_up_naming_the_limit() -> None:
    clock = Clock()
    server = FlakyServer(clock, down_at=2.0, up_at=10**9)
    console, _out = _console()
    with pytest.raises(ServerUnavailable, match="--server-patience-s 90") as raised:
        watch_campaign(server, timeout=10**6, console=console, clock=clock, sleep=clock.sleep, server_patience=90)
    assert "no answer from the server" in str(raised.value)
    assert 90 <= clock.now - 2.0 <= 90 + 1  # gave up at the limit, not before and not much after


def test_a_refusal_that_is_not_an_outage_still_ends_the_watch_at_once() -> None:
    clock = Clock()
    server = FlakyServer(clock, down_at=0.0, up_at=10**9, error=ServerError("GET /progress -> 401: unknown token"))
    with pytest.raises(ServerError, match="401"):
        watch_campaign(server, timeout=600, console=None, clock=clock, sleep=clock.sleep)
    assert server.refusals == 1


def test_ota_sim_has_the_patience_flag_with_its_default() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0
    assert "--server-patience-s" in result.output
    assert DEFAULT_SERVER_PATIENCE_S >= 60


@pytest.mark.parametrize(("status", "outage"), [(503, True), (502, True), (500, True), (404, False), (401, False)])
def test_the_operator_client_tells_an_outage_from_a_refusal(status: int, outage: bool) -> None:
    answer = httpx.MockTransport(lambda request: httpx.Response(status, json={"detail": "no"}))
    with OperatorClient("http://ota.test", token="t", transport=answer) as client, pytest.raises(ServerError) as raised:
        client.progress(1)
    assert isinstance(raised.value, ServerUnavailable) is outage


def test_no_connection_at_all_is_an_outage() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = OperatorClient("http://ota.test", token="t", transport=httpx.MockTransport(refuse))
    with client, pytest.raises(ServerUnavailable, match="cannot reach the server"):
        client.progress(1)
