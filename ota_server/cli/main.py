"""The ``ota`` command: one group per module of this package, and ``ota demo``.

This is the entry point. Commands run on the server's machine (:mod:`~ota_server.cli.server`:
serve, db, broker; :mod:`~ota_server.cli.keys`) build :class:`Settings` from the environment
(``OTA_*``) and their flags, once (:mod:`~ota_server.cli.host`); every other command talks to the
server named by ``OTA_SERVER`` through the REST API (:mod:`~ota_server.cli.common`): releases,
vehicles, recalls, campaigns, and the admin's tokens, audit and regulator reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ota_server.cli import admin, campaigns, groups, keys, recalls, releases, server, vehicles, webhooks

app = typer.Typer(help="Over-the-air vehicle recall server.", no_args_is_help=True, add_completion=False)


def demo(
    cars: Annotated[int, typer.Option(min=1, max=20_000, help="How many virtual cars")] = 200,
    json_out: Annotated[bool, typer.Option("--json", help="Also print the summary as one JSON line, last")] = False,
    data_dir: Annotated[Path, typer.Option(help="The demo server's database, keys and logs")] = Path("var/demo"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the campaign to finish")] = 900.0,
    keep_state: Annotated[bool, typer.Option(help="Keep the virtual cars' slots and journals")] = False,
) -> None:
    """Start a server on embedded defaults, run one recall over N simulated cars, print a summary.

    Exit code 0 only when every car is remedied.
    """
    # Lazy import: the demo is a fleet scenario; the server itself never imports the simulator,
    # and the server's image (the ota-server wheel) does not ship it.
    try:
        from simulator.demo import run_demo
    except ModuleNotFoundError as exc:
        typer.echo(
            f"ota demo needs the simulator ({exc.name} is not installed): it ships with the development "
            "install (`make demo` from a clone), not with the ota-server wheel or its Docker image",
            err=True,
        )
        raise typer.Exit(2) from exc

    raise typer.Exit(run_demo(cars, as_json=json_out, data_dir=data_dir, timeout=timeout, keep_state=keep_state))


for group in (server, keys, releases, vehicles, groups, recalls, campaigns, webhooks, admin):  # groups adds to vehicles
    group.register(app)
app.command()(demo)


def main() -> None:
    app()
