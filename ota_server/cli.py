"""The ``ota`` command: ``ota serve``, ``ota db upgrade`` (and ``ota demo``, added by the demo).

This is the entry point, so it is where :class:`Settings` is built from the
environment (``OTA_*``) and command-line flags, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ota_server.cli_ops import register as register_operator_commands
from ota_server.config import Settings
from ota_server.errors import OtaError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(help="Over-the-air vehicle recall server.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")
vehicles_app = typer.Typer(help="Vehicle identity.", no_args_is_help=True)
app.add_typer(vehicles_app, name="vehicles")
broker_app = typer.Typer(help="The locked-down Mosquitto broker.", no_args_is_help=True)
app.add_typer(broker_app, name="broker")


def _settings(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except OtaError as exc:
        raise typer.BadParameter(exc.message) from exc


def _configure_logging(level: str, fmt: str = "text") -> None:
    from ota_server.logs import configure

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
    from ota_server.server import serve_forever  # heavy imports only for this command

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


@vehicles_app.command("provision")
def vehicles_provision(
    vin: Annotated[str, typer.Argument(help="A registered vehicle's VIN")],
    out: Annotated[Path, typer.Option(help="Directory for the car's config bundle (agent.toml, keys, roots)")],
    server: Annotated[str | None, typer.Option(help="Running server's URL (default: OTA_PUBLIC_URL)")] = None,
    certificate: Annotated[bool, typer.Option(help="Also issue an MQTT client certificate (TLS broker)")] = True,
    token: Annotated[
        str | None, typer.Option(envvar="OTA_TOKEN", help="An operator's API token (env OTA_TOKEN)")
    ] = None,
) -> None:
    """Issue a car's report key and client certificate on the running server; write its config bundle.

    The private keys exist only in the bundle; provisioning again replaces the key (the old one is rejected).
    """
    import httpx

    from firmware_bundles.errors import ContractError
    from firmware_bundles.provisioning import write_bundle

    base = (server or _settings().resolved_public_url).rstrip("/")
    url = f"{base}/api/v1/vehicles/{vin.strip().upper()}/provision"
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(url, params={"certificate": certificate}, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.status_code != 200:
        typer.echo(f"error: {url} -> {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    try:
        path = write_bundle(out, response.json())
    except (ContractError, ValueError) as exc:
        typer.echo(f"error: unexpected answer from {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(str(path))


@vehicles_app.command("revoke")
def vehicles_revoke(
    vin: Annotated[str, typer.Argument(help="The car whose client certificate is revoked")],
    server: Annotated[str | None, typer.Option(help="Running server's URL (default: OTA_PUBLIC_URL)")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="OTA_TOKEN", help="An operator's API token (env OTA_TOKEN)")
    ] = None,
) -> None:
    """Revoke a car's MQTT client certificate (stolen, retired); the server rewrites the broker's CRL.

    The broker refuses the certificate once it has re-read the CRL (SIGHUP or restart).
    """
    import httpx

    base = (server or _settings().resolved_public_url).rstrip("/")
    url = f"{base}/api/v1/vehicles/{vin.strip().upper()}/certificate/revoke"
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(url, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if response.status_code != 200:
        typer.echo(f"error: {url} -> {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    revoked = response.json().get("revoked", [])
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
    from ota_server.mosquitto_config import write_broker_config
    from ota_server.pki import CertificateAuthority

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


# --- `ota tokens` and `ota audit`: straight to the database, for whoever runs the server ---

tokens_app = typer.Typer(help="API tokens (people and their roles).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
DataDirOption = Annotated[Path | None, typer.Option(help="Data directory (for the default SQLite URL)")]


def _sessions(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """Open the database (schema brought up to date) for a one-shot command."""
    from ota_server.db.migrate import upgrade
    from ota_server.db.session import make_engine, make_session_factory

    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    return engine, make_session_factory(engine)


def _cli_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="The person the token belongs to")],
    role: Annotated[str, typer.Option(help="viewer, operator, approver or admin")],
    data_dir: DataDirOption = None,
) -> None:
    """Create a token and print its secret (shown once; only its hash is stored)."""
    from ota_server.clock import utc_now
    from ota_server.roles import Role
    from ota_server.services import audit, tokens

    try:
        chosen = Role(role)
    except ValueError as exc:
        raise typer.BadParameter(f"role must be one of {', '.join(r.value for r in Role)}") from exc
    settings = _settings(data_dir=data_dir)
    engine, sessions = _sessions(settings)
    action = audit.Action(
        actor=_cli_actor(),
        role=Role.ADMIN.value,
        method="CLI",
        route="ota tokens create",
        status=201,
        target={"name": name, "role": chosen.value},
    )
    try:
        with sessions() as session:
            audit.record_commits(session, action, utc_now)
            created = tokens.create(session, name, chosen, created_by=action.actor, now=utc_now())
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    typer.echo(created.token)


@tokens_app.command("list")
def tokens_list(data_dir: DataDirOption = None) -> None:
    """Every token: id, name, role, prefix, revoked or not (never the secret)."""
    from ota_server.services import tokens

    engine, sessions = _sessions(_settings(data_dir=data_dir))
    try:
        with sessions() as session:
            for token in tokens.list_all(session):
                revoked = f" revoked {token.revoked_at.isoformat()}" if token.revoked_at else ""
                typer.echo(f"{token.id}\t{token.name}\t{token.role}\t{token.prefix}...{revoked}")
    finally:
        engine.dispose()


@audit_app.command("verify")
def audit_verify(data_dir: DataDirOption = None) -> None:
    """Recompute the audit log's hash chain; exit 1 and name the first broken entry if it fails."""
    from ota_server.services import audit

    engine, sessions = _sessions(_settings(data_dir=data_dir))
    try:
        with sessions() as session:
            result = audit.verify(session)
    finally:
        engine.dispose()
    if not result.ok:
        typer.echo(f"audit log BROKEN after {result.entries} intact entries: {result.problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"audit log intact: {result.entries} entries, head {result.head_hash}")


# --- `ota reports export`: straight to the database, like `ota tokens` -----------------

reports_app = typer.Typer(help="Regulator and operator reports (CSV, JSON, PDF).", no_args_is_help=True)
app.add_typer(reports_app, name="reports")


@reports_app.command("export")
def reports_export(
    recall_id: Annotated[int, typer.Argument(min=1, help="The recall's id")],
    kind: Annotated[str, typer.Option(help="population, completion, vin-status, notices or type-approval")],
    out: Annotated[Path, typer.Option(help="File to write")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json, or pdf (completion only)")] = "csv",
    quarter: Annotated[str | None, typer.Option(help="Completion report quarter, YYYYQn (default: now)")] = None,
    week: Annotated[str | None, typer.Option(help="VIN status week, YYYY-Www (default: now)")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write one recall's report to a file (the audit log: GET /api/v1/audit/export)."""
    from ota_server.clock import utc_now
    from ota_server.reports import build, render

    engine, sessions = _sessions(_settings(data_dir=data_dir))
    try:
        with sessions() as session:
            report = build(session, kind, recall_id, utc_now(), quarter=quarter, week=week)
            body, _ = render(report, fmt)
    except OtaError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    out.write_bytes(body)
    typer.echo(f"wrote {report.kind} report of recall {report.meta['recall_number']} to {out} ({len(body)} bytes)")


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
    engine, sessions = _sessions(settings)
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
    server: Annotated[str | None, typer.Option(help="Running server's URL (default: OTA_PUBLIC_URL)")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="OTA_TOKEN", help="An operator's API token (env OTA_TOKEN)")
    ] = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Fetch the pending Image targets, sign it with the offline targets key, and publish it."""
    import httpx

    from ota_server.signing.offline import OfflineSigningError, sign_pending

    base = (server or _settings().resolved_public_url).rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    passphrase = _passphrase(passphrase_env, prompt_passphrase)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
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


def main() -> None:
    app()
