"""`ota demo`: the whole service on one machine, embedded defaults, one recall, N cars."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from simulator.errors import SimulatorError
from simulator.fleet import make_fleet
from simulator.operator_client import OperatorClient
from simulator.report import exit_code, print_summary
from simulator.runner import InProcessFleet
from simulator.scenario import ScenarioOptions, run_recall, second_person, state_root
from simulator.server_process import ServerProcess


def run_demo(cars: int, *, as_json: bool, data_dir: Path, timeout: float, keep_state: bool = False) -> int:
    """Start a server, run one recall over ``cars`` simulated cars, print the summary; exit code."""
    out = Console()
    progress = Console(stderr=True)
    server = ServerProcess(data_dir)
    fleet = make_fleet(cars)
    cars_dir = state_root(data_dir, fleet)
    try:
        with server as endpoints:
            for line in server.warnings():
                progress.print(f"[yellow]server: {line}[/yellow]", highlight=False)
            progress.print(f"Server at {endpoints.api_url} (docs {endpoints.api_url}/docs), MQTT {endpoints.mqtt_url}")
            # A real organisation: the bootstrap admin creates the people; an operator files the
            # safety recall and requests its launch, a safety officer approves it.
            with (
                OperatorClient(endpoints.api_url, token=server.admin_token()) as admin,
                second_person(admin, f"safety-officer-{fleet.run_id}", operator=f"operator-{fleet.run_id}") as approver,
            ):
                runner = InProcessFleet(cars_dir)
                options = ScenarioOptions(timeout=timeout)
                summary = run_recall(approver.requester, fleet, runner, options, progress, approver=approver)
    except SimulatorError as exc:
        progress.print(f"[red]demo failed:[/red] {exc}")
        progress.print(f"server log: {server.log_path}")
        return 2
    finally:
        if not keep_state:
            shutil.rmtree(cars_dir, ignore_errors=True)
    print_summary(summary, as_json=as_json, console=out)
    return exit_code(summary)
