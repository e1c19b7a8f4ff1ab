"""Schema upgrades through Alembic's API, run automatically at startup and by ``ota db upgrade``.

On PostgreSQL an advisory lock serialises replicas that start at the same time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from ota_server.errors import NotReady

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_PG_LOCK_ID = 0x07A5E7  # arbitrary, constant across replicas


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    config = alembic_config()
    if engine.dialect.name == "sqlite":
        _upgrade_sqlite(engine, config, revision)
        return
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    log.info("database schema at %s", revision)


def require_current(engine: Engine) -> None:
    """Refuse a database whose schema is not at the newest revision (``ota db upgrade`` first)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        raise NotReady(
            f"database schema is at {current or 'nothing'}, this server needs {head}: run `ota db upgrade` "
            "(or start with OTA_AUTO_MIGRATE=1)"
        )


def _upgrade_sqlite(engine: Engine, config: Config, revision: str) -> None:
    """Alembic's batch mode rebuilds SQLite tables (copy, drop, rename).

    With foreign keys enforced, dropping a table that others reference fails, so, as
    Alembic's documentation advises, enforcement is off during the upgrade and
    ``foreign_key_check`` must come back clean at the end. (Python's sqlite3 driver runs
    DDL outside transactions, so back up the file before upgrading a database you care about.)
    """
    with engine.connect() as connection:
        # outside a transaction, or SQLite ignores it: the driver sends no BEGIN for a PRAGMA,
        # and commit() ends SQLAlchemy's own autobegun transaction
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"schema upgrade would leave dangling references: {broken[:5]}")
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
    log.info("database schema at %s", revision)
