"""The ``ota`` command: ``ota serve``, ``ota db upgrade`` (and ``ota demo``, added by the demo).

This is the entry point, so it is where :class:`Settings` is built from the
environment (``OTA_*``) and command-line flags, once.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from ota_server.config import Settings
from ota_server.errors import OtaError

app = typer.Typer(help="Over-the-air vehicle recall server.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except OtaError as exc:
        raise typer.BadParameter(exc.message) from exc


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("amqtt").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("transitions").setLevel(logging.WARNING)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1, env OTA_HOST)")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port; 0 = any free port (default 8000 if free, env OTA_PORT)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Database, keys and bundles (default ./var)")] = None,
    ready_file: Annotated[
        Path | None, typer.Option(help="Write {api_url, mqtt_url, repo_url, pid} as JSON here once ready")
    ] = None,
) -> None:
    """Run the API (and an embedded MQTT broker unless OTA_MQTT_URL is set) until SIGTERM/SIGINT."""
    from ota_server.server import serve_forever  # heavy imports only for this command

    settings = _settings(host=host, port=port, data_dir=data_dir)
    _configure_logging(settings.log_level)
    try:
        asyncio.run(serve_forever(settings, ready_file))
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (for the default SQLite URL)")] = None,
) -> None:
    """Bring the database schema up to date (the server also does this at startup)."""
    from ota_server.db.migrate import upgrade
    from ota_server.db.session import make_engine

    settings = _settings(data_dir=data_dir)
    _configure_logging(settings.log_level)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    typer.echo(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


# --- `ota demo` -------------------------------------------------------------------


@app.command()
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
    # Lazy import: the demo is a fleet scenario; the server itself never imports the simulator.
    from simulator.demo import run_demo

    raise typer.Exit(run_demo(cars, as_json=json_out, data_dir=data_dir, timeout=timeout, keep_state=keep_state))


def main() -> None:
    app()
