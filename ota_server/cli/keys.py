"""``ota keys init|rotate|revoke``: the offline root and targets keys (on the server's machine).

The offline keys' options and passphrase are shared with ``ota releases sign``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ota_server.cli.host import (
    DataDirOption,
    configure_logging,
    existing_database,
    settings_from,
)
from ota_server.errors import OtaError

keys_app = typer.Typer(help="Signing keys: offline root/targets keys, rotation, revocation.", no_args_is_help=True)
OfflineDirOption = Annotated[Path, typer.Option(help="Directory of the offline keys (root, targets, Director root)")]
PassphraseEnvOption = Annotated[
    str | None, typer.Option(help="Name of an environment variable holding the offline keys' passphrase")
]
PromptOption = Annotated[bool, typer.Option(help="Ask for the offline keys' passphrase")]


def passphrase_from(env_name: str | None, prompt: bool, *, confirm: bool = False) -> bytes | None:
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

    settings = settings_from(data_dir=data_dir)
    configure_logging(settings.log_level)
    dirs = keyadmin.KeyDirs(offline_dir, settings.keys_dir, passphrase)
    engine, sessions = existing_database(settings)
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

    For a fresh database. The running server then stores uploads as pending until `ota releases sign`.
    """
    passphrase = passphrase_from(passphrase_env, prompt_passphrase, confirm=True)
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
    _key_command(data_dir, offline_dir, passphrase_from(passphrase_env, prompt_passphrase), "rotate", role)


@keys_app.command("revoke")
def keys_revoke(
    keyid: Annotated[str, typer.Argument(help="The key id to remove from every role trusting it")],
    offline_dir: OfflineDirOption,
    data_dir: DataDirOption = None,
    passphrase_env: PassphraseEnvOption = None,
    prompt_passphrase: PromptOption = False,
) -> None:
    """Remove a key in a new root version (refused if a role would fall below its threshold)."""
    _key_command(data_dir, offline_dir, passphrase_from(passphrase_env, prompt_passphrase), "revoke", keyid)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
