"""`ota-sim`: run N virtual cars (the real agent code) against a running server.

Up to ``IN_PROCESS_MAX`` cars run in this process by default; more (or ``--workers N``) run
in worker processes (``simulator.workers``), spread over the brokers given with
``--mqtt-url`` (repeat it; default: the broker the server tells cars about).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from simulator.errors import ServerError, SimulatorError
from simulator.faults import FaultPlan
from simulator.fleet import MAX_ECUS, Fleet, make_fleet
from simulator.operator_client import OperatorClient
from simulator.progress import DEFAULT_SERVER_PATIENCE_S
from simulator.report import exit_code, print_summary
from simulator.runner import InProcessFleet, Pacing
from simulator.scenario import FleetRunner, ScenarioOptions, run_recall, second_person, state_root
from simulator.workers import ProcessFleet, default_workers, on_brokers

IN_PROCESS_MAX = 1000
IN_PROCESS_MAX_HARD = 15_000  # one socket per car against the 20,000 open files of a process

app = typer.Typer(add_completion=False, help=__doc__)


def _runner(
    cars_dir: Path,
    cars: int,
    workers: int | None,
    mqtt_urls: list[str],
    faults: FaultPlan,
    pacing: Pacing,
    console: Console,
) -> FleetRunner:
    """This process for a small fleet (one broker), worker processes otherwise."""
    count = workers if workers is not None else (0 if cars <= IN_PROCESS_MAX else default_workers(cars))
    if count == 0:
        if cars > IN_PROCESS_MAX_HARD:
            raise typer.BadParameter(f"at most {IN_PROCESS_MAX_HARD} cars in one process (open files): use --workers")
        if len(mqtt_urls) > 1:
            raise typer.BadParameter("several --mqtt-url need worker processes: use --workers")
        if mqtt_urls:
            return _OnBroker(cars_dir, mqtt_urls[0], faults=faults, pacing=pacing)
        return InProcessFleet(cars_dir, faults=faults, pacing=pacing)
    return ProcessFleet(cars_dir, workers=count, broker_urls=mqtt_urls, faults=faults, pacing=pacing, console=console)


class _OnBroker(InProcessFleet):
    """In this process, every car on one given broker."""

    def __init__(self, state_dir: Path, mqtt_url: str, **kwargs: Any) -> None:
        super().__init__(state_dir, **kwargs)
        self._mqtt_url = mqtt_url

    def start(self, fleet: Fleet, agent_configs: list[dict[str, Any]]) -> None:
        super().start(fleet, on_brokers(agent_configs, [self._mqtt_url]))


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
    cars: Annotated[int, typer.Option(min=1, max=999_999, help="How many virtual cars")] = 200,
    ecus: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_ECUS,
            help="ECUs per car, each with its own hardware id and A/B slots; the recall updates them all",
        ),
    ] = 1,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help=f"Worker processes for the cars (0: all in this process; default: 0 up to {IN_PROCESS_MAX} cars, "
            "else max(2, cars/8000))",
        ),
    ] = None,
    mqtt_url: Annotated[
        list[str] | None,
        typer.Option(help="Broker(s) for the cars, repeatable: car i uses the i-th mod N (default: the server's)"),
    ] = None,
    connect_rate: Annotated[float, typer.Option(min=1.0, help="Car connects per second, whole fleet")] = 1000.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line last")] = False,
    state_dir: Annotated[Path, typer.Option(help="Where the cars keep their slots and journals")] = Path("var"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the campaign to finish")] = 600.0,
    server_patience_s: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="While the campaign runs, how long to keep asking a server that does not answer (restart, "
            "database outage; the cars keep running) before giving up",
        ),
    ] = DEFAULT_SERVER_PATIENCE_S,
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
    slow_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of cars on a slow link (see --slow-bytes-per-second)")
    ] = 0.0,
    slow_bytes_per_second: Annotated[float, typer.Option(min=1.0, help="A slow car's HTTP speed")] = 8192.0,
    power_cut_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of cars that lose power mid-install (a new agent resumes)"),
    ] = 0.0,
    power_cut_seconds: Annotated[float, typer.Option(min=0.0, help="How long the power stays off")] = 1.0,
    late_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of cars that first come online after the launch")
    ] = 0.0,
    late_seconds: Annotated[float, typer.Option(min=0.0, help="How long after the launch late cars come")] = 5.0,
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
        slow_rate=slow_rate,
        slow_bytes_per_second=slow_bytes_per_second,
        power_cut_rate=power_cut_rate,
        power_cut_seconds=power_cut_seconds,
        late_rate=late_rate,
        late_seconds=late_seconds,
    )
    fleet = make_fleet(cars, seed=seed, ecus=ecus)
    cars_dir = state_root(state_dir, fleet)
    try:
        with OperatorClient(server, token=token) as client, _approver(client, approver_token, fleet.run_id) as approver:
            client.health()
            options = ScenarioOptions(timeout=timeout, server_patience=server_patience_s)
            runner = _runner(cars_dir, cars, workers, mqtt_url or [], faults, Pacing.per_second(connect_rate), progress)
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
