"""Alembic environment: runs on the connection handed in by ``ota_server.db.migrate``.

Falls back to ``sqlalchemy.url`` from the config so the plain ``alembic`` CLI
works for developers writing new revisions.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from ota_server.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run(conn)


run_migrations_online()
