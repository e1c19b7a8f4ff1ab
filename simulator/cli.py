"""`ota-sim`: run N virtual cars (the real agent code) against a running server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from simulator.errors import ServerError, SimulatorError
from simulator.faults import FaultPlan
from simulator.fleet import make_fleet
from simulator.operator_client import OperatorClient
from simulator.report import exit_code, print_summary
from simulator.runner import InProcessFleet
from simulator.scenario import ScenarioOptions, run_recall, second_person, state_root

app = typer.Typer(add_completion=False, help=__doc__)


def _approver(client: OperatorClient, token: str | None, run_id: str) -> OperatorClient:
    """The second person: from ``--approver-token``, or a token made now with an admin ``--token``."""
    if token:
        return OperatorClient(client.base_url, token=token)
    try:
        return second_person(client, f"ota-sim-approver-{run_id}")
    except ServerError as exc:
        raise ServerError(f"the safety recall needs a second person: pass --approver-token ({exc})") from exc


@app.command()
def run(
    server: Annotated[str, typer.Option(help="Base URL of the OTA server, e.g. http://127.0.0.1:8000")],
    token: Annotated[str, typer.Option(envvar="OTA_TOKEN", help="API token (operator or admin; env OTA_TOKEN)")],
    approver_token: Annotated[
        str | None,
        typer.Option(
            envvar="OTA_APPROVER_TOKEN",
            help="Another person's approver token for the safety recall's launch (default: made with an admin --token)",
        ),
    ] = None,
    cars: Annotated[int, typer.Option(min=1, max=20_000, help="How many virtual cars")] = 200,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line last")] = False,
    state_dir: Annotated[Path, typer.Option(help="Where the cars keep their slots and journals")] = Path("var"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the campaign to finish")] = 600.0,
    keep_state: Annotated[bool, typer.Option(help="Keep the cars' state directories afterwards")] = False,
    fail_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of cars whose new slot fails its health check (rolled_back)")
    ] = 0.0,
    offline_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of cars that connect late (see --offline-seconds)")
    ] = 0.0,
    defer_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of cars not parked when notified: they defer, then proceed")
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the fleet and the fault picks")] = None,
    offline_seconds: Annotated[float, typer.Option(help="How late an offline car connects; negative: never")] = 30.0,
    defer_seconds: Annotated[float, typer.Option(min=0.0, help="How long a deferring car stays unparked")] = 2.0,
    fail_times: Annotated[
        int, typer.Option(min=0, help="Failing cars fail only their first N attempts (0: every attempt)")
    ] = 0,
) -> None:
    """Register a fresh fleet, file and launch a recall for it, run the cars until all are done."""
    progress = Console(stderr=True)
    faults = FaultPlan(
        fail_rate=fail_rate,
        offline_rate=offline_rate,
        defer_rate=defer_rate,
        seed=seed,
        fail_times=fail_times or None,
        offline_seconds=None if offline_seconds < 0 else offline_seconds,
        defer_seconds=defer_seconds,
    )
    fleet = make_fleet(cars, seed=seed)
    cars_dir = state_root(state_dir, fleet)
    try:
        with OperatorClient(server, token=token) as client, _approver(client, approver_token, fleet.run_id) as approver:
            client.health()
            options = ScenarioOptions(timeout=timeout)
            runner = InProcessFleet(cars_dir, faults=faults)
            summary = run_recall(client, fleet, runner, options, progress, approver=approver)
    except SimulatorError as exc:
        progress.print(f"[red]simulation failed:[/red] {exc}")
        raise typer.Exit(2) from exc
    finally:
        if not keep_state:
            shutil.rmtree(cars_dir, ignore_errors=True)
    print_summary(summary, as_json=json_out, console=Console())
    raise typer.Exit(exit_code(summary))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
