"""The ``ota`` command: ``ota serve``, ``ota db``, ``ota keys``, ``ota demo``, and the operator commands.

This is the entry point, so it is where :class:`Settings` is built from the
environment (``OTA_*``) and command-line flags, once. Every operator command talks to the
server named by ``OTA_SERVER`` through the REST API (``cli_ops``, ``cli_admin``); only
``ota db`` and ``ota keys`` open the database, an existing one, and say which.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from firmware_bundles.vin import normalize_vin
from ota_server.cli.admin import register as register_admin_commands
from ota_server.cli.fleet import register as register_fleet_commands
from ota_server.cli.recalls import DEFAULT_SERVER, ServerOption, TokenOption, client_for
from ota_server.cli.recalls import register as register_operator_commands
from ota_server.config import Settings
from ota_server.errors import OtaError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="Over-the-air vehicle recall server.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
vehicles_app = typer.Typer(help="Vehicles: import, list, show, update, decommission; identity.", no_args_is_help=True)
app.add_typer(vehicles_app, name="vehicles")
broker_app = typer.Typer(help="The locked-down Mosquitto broker.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except OtaError as exc:
        raise typer.BadParameter(exc.message) from exc


def _configure_logging(level: str, fmt: str = "text") -> None:
    from ota_server.infra.logs import configure

    configure(level, fmt)
    logging.getLogger("amqtt").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("transitions").setLevel(logging.WARNING)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (a third less CPU per request and MQTT message), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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
    from ota_server.http.server import serve_forever  # heavy imports only for this command

    settings = _settings(host=host, port=port, data_dir=data_dir)
    _configure_logging(settings.log_level, settings.log_format)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
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

    settings = _settings(data_dir=data_dir)
    _configure_logging(settings.log_level)
    missing = _missing_sqlite_file(settings.resolved_database_url)
    if missing is not None and not create:
        typer.echo(f"error: no database at {missing} (add --create to make a new one there)", err=True)
        raise typer.Exit(1)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    typer.echo(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


@vehicles_app.command("provision")
def vehicles_provision(
    vin: Annotated[str, typer.Argument(help="A registered vehicle's VIN")],
    out: Annotated[Path, typer.Option(help="Directory for the car's config bundle (agent.toml, keys, roots)")],
    server: ServerOption = DEFAULT_SERVER,
    certificate: Annotated[bool, typer.Option(help="Also issue an MQTT client certificate (TLS broker)")] = True,
    token: TokenOption = None,
) -> None:
    """Issue a car's report key and client certificate on the running server; write its config bundle.

    The private keys exist only in the bundle; provisioning again replaces the key (the old one is rejected).
    """
    from firmware_bundles.errors import ContractError
    from firmware_bundles.provisioning import write_bundle

    with client_for(server, token) as client:
        answer = client.provision_vehicle(normalize_vin(vin), certificate=certificate)
    try:
        path = write_bundle(out, answer)
    except (ContractError, ValueError) as exc:
        typer.echo(f"error: unexpected answer from {server}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(str(path))


@vehicles_app.command("revoke")
def vehicles_revoke(
    vin: Annotated[str, typer.Argument(help="The car whose client certificate is revoked")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
) -> None:
    """Revoke a car's MQTT client certificate (stolen, retired); the server rewrites the broker's CRL.

    The broker refuses the certificate once it has re-read the CRL (SIGHUP or restart).
    """
    with client_for(server, token) as client:
        answer = client.revoke_certificate(normalize_vin(vin))
    revoked = answer.get("revoked", [])
    typer.echo(f"revoked {len(revoked)} certificate(s): {', '.join(revoked) or '-'}")
    typer.echo("# make the broker read the new CRL: kill -HUP <mosquitto pid>")


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
    from ota_server.mqtt.mosquitto_config import write_broker_config
    from ota_server.mqtt.pki import CertificateAuthority

    settings = _settings(data_dir=data_dir)
    _configure_logging(settings.log_level)
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


# --- the database, for the few commands that must open it (`ota db`, `ota keys`) -------------

DataDirOption = Annotated[Path | None, typer.Option(help="Data directory (for the default SQLite URL)")]


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist (opening it would make an empty one)."""
    from sqlalchemy.engine import make_url

    from ota_server.db.session import is_sqlite

    if not is_sqlite(url):
        return None  # a server database exists or the connection fails; nothing is created
    database = make_url(url).database
    if not database or database == ":memory:":
        return Path(":memory:")
    path = Path(database)
    return None if path.is_file() else path


def _existing_database(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """Open the database ``settings`` name, which must exist at the newest schema; say which on stderr.

    Never creates one: run from the wrong directory, ``./var`` would otherwise become a new,
    empty database that the server never reads.
    """
    from ota_server.db.migrate import require_current
    from ota_server.db.session import make_engine, make_session_factory

    url = settings.resolved_database_url
    missing = _missing_sqlite_file(url)
    if missing is not None:
        typer.echo(
            f"error: no database at {missing} (give --data-dir or OTA_DATABASE_URL of the server's database; "
            "`ota db upgrade --create` makes a new one)",
            err=True,
        )
        raise typer.Exit(1)
    engine = make_engine(url)
    typer.echo(f"database: {engine.url.render_as_string(hide_password=True)}", err=True)
    try:
        require_current(engine)
    except OtaError as exc:
        engine.dispose()
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    return engine, make_session_factory(engine)


def _cli_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


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

    settings = _settings(data_dir=data_dir)
    engine, sessions = _existing_database(settings)
    action = audit.Action(
        actor=_cli_actor(),
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


# --- `ota keys` and `ota release sign`: the offline keys -----------------------------

keys_app = typer.Typer(help="Signing keys: offline root/targets keys, rotation, revocation.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
release_app = typer.Typer(help="Releases: signing pending targets with the offline key.", no_args_is_help=True)
app.add_typer(release_app, name="release")
OfflineDirOption = Annotated[Path, typer.Option(help="Directory of the offline keys (root, targets, Director root)")]
PassphraseEnvOption = Annotated[
    str | None, typer.Option(help="Name of an environment variable holding the offline keys' passphrase")
]
PromptOption = Annotated[bool, typer.Option(help="Ask for the offline keys' passphrase")]


def _passphrase(env_name: str | None, prompt: bool, *, confirm: bool = False) -> bytes | None:
    import os

    if env_name:
        value = os.environ.get(env_name)
        if not value:
            raise typer.BadParameter(f"environment variable {env_name} is not set", param_hint="--passphrase-env")
        return value.encode()
    if prompt:
        return str(typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)).encode()
    return None


def _key_command(data_dir: Path | None, offline_dir: Path, passphrase: bytes | None, work: str, *args: str) -> None:
    """Run one ``signing.keyadmin`` command in a transaction, commit, then retire replaced keys."""
    from ota_server.clock import utc_now
    from ota_server.signing import keyadmin

    settings = _settings(data_dir=data_dir)
    _configure_logging(settings.log_level)
    dirs = keyadmin.KeyDirs(offline_dir, settings.keys_dir, passphrase)
    engine, sessions = _existing_database(settings)
    try:
        with sessions() as session:
            command = getattr(keyadmin, work)
            change: keyadmin.KeyChange = command(session, dirs, *args, settings.expiry, utc_now())
            session.commit()
        keyadmin.retire(change)
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    for repo, version in change.roots.items():
        typer.echo(f"{repo} root is now v{version}")
    for path in change.written:
        typer.echo(f"wrote {path}")
    for path in change.to_retire:
        typer.echo(f"retired {path}")
    for what in change.resigned:
        typer.echo(f"re-signed {what}")


@keys_app.command("init")
def keys_init(
    offline_dir: OfflineDirOption,
    data_dir: DataDirOption = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Make the Image root (3 keys, threshold 2) and targets keys offline, the online keys on the server.

    For a fresh database. The running server then stores uploads as pending until `ota release sign`.
    """
    passphrase = _passphrase(passphrase_env, prompt_passphrase, confirm=True)
    if passphrase is None:
        typer.echo("warning: the offline keys are written UNENCRYPTED (see --prompt-passphrase)", err=True)
    _key_command(data_dir, offline_dir, passphrase, "init")


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help="root, targets, snapshot, timestamp or director")],
    offline_dir: OfflineDirOption,
    data_dir: DataDirOption = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Replace a role's keys in a new root version signed by the old and the new root keys."""
    _key_command(data_dir, offline_dir, _passphrase(passphrase_env, prompt_passphrase), "rotate", role)


@keys_app.command("revoke")
def keys_revoke(
    keyid: Annotated[str, typer.Argument(help="The key id to remove from every role trusting it")],
    offline_dir: OfflineDirOption,
    data_dir: DataDirOption = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Remove a key in a new root version (refused if a role would fall below its threshold)."""
    _key_command(data_dir, offline_dir, _passphrase(passphrase_env, prompt_passphrase), "revoke", keyid)


@release_app.command("sign")
def release_sign(
    offline_dir: OfflineDirOption,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Fetch the pending Image targets, sign it with the offline targets key, and publish it."""
    import httpx

    from ota_server.cli import recalls as cli_ops
    from ota_server.signing.offline import OfflineSigningError, sign_pending

    base = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    passphrase = _passphrase(passphrase_env, prompt_passphrase)
    try:
        transport = cli_ops.transport_override
        with httpx.Client(base_url=base, headers=headers, timeout=60, transport=transport) as client:
            result = sign_pending(client, offline_dir, passphrase)
    except (OfflineSigningError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    for line in result.summary:
        typer.echo(line)
    typer.echo(f"published targets v{result.targets_version}: releases {result.release_ids}")


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


# --- the operator's commands over the REST API (releases, vehicles import, recalls, campaigns) ---

register_operator_commands(app, vehicles_app)
register_fleet_commands(vehicles_app)
register_admin_commands(app)


def main() -> None:
    app()
