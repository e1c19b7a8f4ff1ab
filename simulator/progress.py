"""Watching a campaign from the server's side: the server's counts are the truth."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from simulator.errors import ScenarioTimeout, ServerUnavailable

ACTIVE_STATES = (
    "pending",
    "notified",
    "deferred",
    "consented",
    "downloading",
    "verifying",
    "installing",
    "rebooting",
)


FLEET_BARS = ("connected", "notified", "remedied", "failed")
# How long the watch keeps asking a server that does not answer (a restart, a database failover)
# before it gives up; the cars keep running meanwhile. ``ota-sim --server-patience-s``.
DEFAULT_SERVER_PATIENCE_S = 300.0
SERVER_BACKOFF_MAX_S = 15.0


def show_fleet(progress: Progress, tasks: Mapping[str, TaskID], bars: Mapping[str, int]) -> None:
    """Update one bar per :data:`FLEET_BARS` entry from the simulator's counts (``bars["cars"]`` is the total)."""
    for name, task in tasks.items():
        progress.update(task, total=bars.get("cars") or None, completed=bars.get(name, 0))


@dataclass(frozen=True)
class Outcome:
    population: int
    remedied: int
    failed: int
    seconds: float
    failures_by_reason: dict[str, int]
    counts: dict[str, int]


def _not_remedied(counts: dict[str, int]) -> int:
    """Cars that ended without the fix: failed, or rolled back to the old slot."""
    return counts.get("failed", 0) + counts.get("rolled_back", 0)


def _describe(counts: dict[str, int]) -> str:
    return " ".join(f"{state}={counts.get(state, 0)}" for state in ACTIVE_STATES if counts.get(state, 0))


def watch_campaign(
    fetch: Callable[[], dict[str, Any]],
    *,
    timeout: float,
    console: Console | None,
    poll_seconds: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    fleet: Callable[[], Mapping[str, int]] | None = None,
    server_patience: float = DEFAULT_SERVER_PATIENCE_S,
) -> Outcome:
    """Poll the campaign's progress until every car is remedied or failed; show a live bar.

    ``fleet`` adds the cars' own view below the server's (``FleetStats.bars``: how many
    cars are connected, were notified, remedied, failed, as the simulator counts them).
    A server that does not answer (:class:`ServerUnavailable`) is asked again with a growing
    backoff, said on the console, for up to ``server_patience`` seconds without an answer;
    the cars keep running meanwhile. Any other refusal ends the watch at once.
    """
    start = clock()
    outage = _Outage(console, server_patience, poll_seconds, clock)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[active]}"),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
    )
    with progress:
        task = progress.add_task("remedied", total=None, failed=0, active="")
        cars: dict[str, TaskID] = {}
        if fleet is not None:
            cars = {name: progress.add_task(f"cars {name}", total=None, failed="-", active="") for name in FLEET_BARS}
        while True:
            try:
                state = fetch()
            except ServerUnavailable as exc:
                wait = outage.missed(exc)
                if clock() - start > timeout:
                    raise ScenarioTimeout(
                        f"campaign not finished after {timeout:.0f}s; the server is not answering"
                    ) from exc
                sleep(wait)
                continue
            outage.answered()
            if fleet is not None:
                show_fleet(progress, cars, fleet())
            counts: dict[str, int] = state["counts"]
            progress.update(
                task,
                total=state["population"],
                completed=counts.get("remedied", 0),
                failed=_not_remedied(counts),
                active=_describe(counts),
            )
            if state["done"]:
                return Outcome(
                    population=state["population"],
                    remedied=counts.get("remedied", 0),
                    failed=_not_remedied(counts),
                    seconds=round(clock() - start, 3),
                    failures_by_reason=dict(state.get("failures_by_reason", {})),
                    counts=counts,
                )
            if clock() - start > timeout:
                raise ScenarioTimeout(f"campaign not finished after {timeout:.0f}s: {_describe(counts)}")
            sleep(poll_seconds)


class _Outage:
    """The server not answering: when it began, how long to wait next, and the console's account of it."""

    def __init__(
        self, console: Console | None, patience: float, poll_seconds: float, clock: Callable[[], float]
    ) -> None:
        self._console = console
        self._patience = patience
        self._poll = max(poll_seconds, 0.1)
        self._clock = clock
        self._began: float | None = None
        self._misses = 0

    def _say(self, text: str) -> None:
        if self._console is not None:
            self._console.log(text)

    def missed(self, exc: ServerUnavailable) -> float:
        """Seconds to wait before asking again; :class:`ServerUnavailable` once the patience is spent."""
        now = self._clock()
        if self._began is None:
            self._began = now
            self._say(
                f"[yellow]server not answering[/yellow] ({exc}); the cars keep running, asking again with "
                f"backoff, giving up after {self._patience:g} s without an answer (--server-patience-s)"
            )
        silent = now - self._began
        if silent >= self._patience:
            raise ServerUnavailable(
                f"no answer from the server for {silent:.0f} s (--server-patience-s {self._patience:g}): {exc}"
            )
        wait = min(SERVER_BACKOFF_MAX_S, self._poll * (1 << min(self._misses + 1, 16)), self._patience - silent)
        self._misses += 1
        self._say(f"server still not answering after {silent:.0f} s; asking again in {wait:.1f} s")
        return wait

    def answered(self) -> None:
        if self._began is not None:
            self._say(f"server answering again after {self._clock() - self._began:.0f} s")
        self._began, self._misses = None, 0
