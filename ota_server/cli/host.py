"""What the commands run on the server's own machine share (``ota serve``, ``ota db``, ``ota broker``,
``ota keys``): :class:`Settings` built once from ``OTA_*`` and the command's flags, logging, and an
existing database opened (never a new one made by mistake).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ota_server.config import Settings
from ota_server.errors import OtaError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

DataDirOption = Annotated[Path | None, typer.Option(help="Data directory (for the default SQLite URL)")]


def settings_from(**overrides: object) -> Settings:
    try:
        return Settings.from_env().with_overrides(**overrides)
    except OtaError as exc:
        raise typer.BadParameter(exc.message) from exc


def configure_logging(level: str, fmt: str = "text") -> None:
    from ota_server.infra.logs import configure

    configure(level, fmt)
    logging.getLogger("amqtt").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("transitions").setLevel(logging.WARNING)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (a third less CPU per request and MQTT message), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def missing_sqlite_file(url: str) -> Path | None:
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


def existing_database(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """Open the database ``settings`` name, which must exist at the newest schema; say which on stderr.

    Never creates one: run from the wrong directory, ``./var`` would otherwise become a new,
    empty database that the server never reads.
    """
    from ota_server.db.migrate import require_current
    from ota_server.db.session import make_engine, make_session_factory

    url = settings.resolved_database_url
    missing = missing_sqlite_file(url)
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


def cli_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"
