"""Watching a campaign from the server's side: the server's counts are the truth."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from simulator.errors import ScenarioTimeout

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
) -> Outcome:
    """Poll the campaign's progress until every car is remedied or failed; show a live bar.

    ``fleet`` adds the cars' own view below the server's (``FleetStats.bars``: how many
    cars are connected, were notified, remedied, failed, as the simulator counts them).
    """
    start = clock()
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
            state = fetch()
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
