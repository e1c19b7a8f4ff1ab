"""``ota serve``, ``ota db upgrade|bootstrap-token`` and ``ota broker config``: run on the server's machine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from ota_server.cli.host import (
    DataDirOption,
    cli_actor,
    configure_logging,
    existing_database,
    loop_factory,
    missing_sqlite_file,
    settings_from,
)
from ota_server.errors import OtaError

db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
broker_app = typer.Typer(help="The locked-down Mosquitto broker.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(serve)
    app.add_typer(db_app, name="db")
    app.add_typer(broker_app, name="broker")


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
    from ota_server.http.server import serve_forever  # heavy imports only for this command

    settings = settings_from(host=host, port=port, data_dir=data_dir)
    configure_logging(settings.log_level, settings.log_format)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve_forever(settings, ready_file))
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (for the default SQLite URL)")] = None,
    create: Annotated[bool, typer.Option("--create", help="Make a new SQLite database if there is none")] = False,
) -> None:
    """Bring the database schema up to date (the server also does this at startup).

    A SQLite file that does not exist is made only with --create: a mistyped --data-dir or
    the wrong directory would otherwise leave an empty database behind.
    """
    from ota_server.db.migrate import upgrade
    from ota_server.db.session import make_engine

    settings = settings_from(data_dir=data_dir)
    configure_logging(settings.log_level)
    missing = missing_sqlite_file(settings.resolved_database_url)
    if missing is not None and not create:
        typer.echo(f"error: no database at {missing} (add --create to make a new one there)", err=True)
        raise typer.Exit(1)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    typer.echo(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


@db_app.command("bootstrap-token")
def db_bootstrap_token(
    name: Annotated[str, typer.Option(help="The person the admin token belongs to")] = "admin",
    data_dir: DataDirOption = None,
) -> None:
    """Create an admin token straight in an EXISTING database and print it (shown once).

    For whoever runs the server when no one holds an admin token (the first start's
    admin-token file is gone, every admin token revoked). Everything else about tokens goes
    through the API: `ota tokens create` with OTA_TOKEN.
    """
    from ota_server.clock import utc_now
    from ota_server.roles import Role
    from ota_server.services import audit, tokens

    settings = settings_from(data_dir=data_dir)
    engine, sessions = existing_database(settings)
    action = audit.Action(
        actor=cli_actor(),
        role=Role.ADMIN.value,
        method="CLI",
        route="ota db bootstrap-token",
        status=201,
        target={"name": name, "role": Role.ADMIN.value},
    )
    try:
        with sessions() as session:
            audit.record_commits(session, action, utc_now)
            created = tokens.create(session, name, Role.ADMIN, created_by=action.actor, now=utc_now())
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(created.token)


@broker_app.command("config")
def broker_config(
    out: Annotated[Path, typer.Option(help="Directory for mosquitto.conf, the ACL file and certificates")],
    port: Annotated[int, typer.Option(help="TLS listener port")] = 8883,
    bind: Annotated[str, typer.Option(help="Address the listener binds")] = "0.0.0.0",
    host: Annotated[
        list[str] | None, typer.Option(help="Name or IP the cars use to reach the broker (repeatable)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where the CA lives (default ./var, env OTA_DATA_DIR)")] = None,
    user: Annotated[str | None, typer.Option(help="Mosquitto's `user` option (when started as root)")] = None,
    persistence: Annotated[bool, typer.Option(help="Keep sessions and queued messages on disk")] = True,
) -> None:
    """Write a TLS-only Mosquitto configuration with per-car ACLs, and the server's client certificate."""
    from ota_server.clock import utc_now
    from ota_server.infra.pki import CertificateAuthority
    from ota_server.mqtt.mosquitto_config import write_broker_config

    settings = settings_from(data_dir=data_dir)
    configure_logging(settings.log_level)
    hosts = host or ["localhost", "127.0.0.1"]
    now = utc_now()
    try:
        ca = CertificateAuthority.load_or_create(settings.ca_dir, now)
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    files = write_broker_config(
        out, ca, now, port=port, bind=bind, hostnames=hosts, persistence=persistence, run_as=user
    )
    if files.to_run:
        typer.echo("# mosquitto cannot read its key yet; as root, run:")
        for command in files.to_run:
            typer.echo(command)
    typer.echo(f"mosquitto -c {files.conf}")
    typer.echo("# then start the server with (it rewrites the CRL there on every revocation;")
    typer.echo("# `kill -HUP <mosquitto pid>` makes the broker read it):")
    for name, value in files.server_env(hosts[0]).items():
        typer.echo(f"export {name}={value}")
    typer.echo("# several replicas also share this (secret: a car that knows it could take reports):")
    for name, value in files.replica_env().items():
        typer.echo(f"# export {name}={value}")
