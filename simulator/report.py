"""How a run's summary is shown: a table for people, one JSON line for scripts."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from simulator.scenario import Summary


def print_summary(summary: Summary, *, as_json: bool, console: Console) -> None:
    table = Table(title=f"Recall {summary.recall_number} (campaign {summary.campaign_id})")
    for column in ("cars", "remedied", "failed", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(str(summary.cars), str(summary.remedied), str(summary.failed), f"{summary.seconds:.2f}")
    console.print(table)
    for reason, count in sorted(summary.failures_by_reason.items()):
        console.print(f"  failed: {reason}: {count}")
    if as_json:
        # the last line of standard output, whatever else was printed
        print(json.dumps(summary.as_json(), separators=(",", ":")), flush=True)


def exit_code(summary: Summary) -> int:
    """0 only when every car is remedied."""
    return 0 if summary.remedied == summary.cars else 1
