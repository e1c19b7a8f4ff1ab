"""Engine and session factory, tuned per backend.

SQLite gets WAL and a busy timeout because the ingest worker and API threads
write concurrently; foreign keys are switched on so both backends enforce them.

PostgreSQL connections are pinged before use only when they sat idle in the pool for
more than ``PING_IDLE_S``: after a database restart the first checkout finds the dead
connection and the pool replaces it, as SQLAlchemy's ``pool_pre_ping`` would, but a busy
server (a connection checked out every few milliseconds) no longer pays a round trip per
checkout. A connection that dies while busy fails its statement; SQLAlchemy then drops
the pool's older connections, and ingest and the scheduler retry.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from ota_server.db.statement_profile import attach_if_enabled


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


PING_IDLE_S = 2.0
_IDLE_SINCE = "ota_idle_since"


def ping_when_idle(engine: Engine, idle_s: float = PING_IDLE_S) -> None:
    """Ping a pooled connection on checkout if it was idle longer than ``idle_s``.

    A failed ping raises :class:`DisconnectionError`, which makes the pool discard the
    connection and try a fresh one (SQLAlchemy's documented custom pre-ping).
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since <= idle_s:
            return  # just opened, or in steady use
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
        except Exception as exc:
            raise DisconnectionError(f"pooled connection unusable after {idle_s:.0f}s idle: {exc}") from exc


def make_engine(url: str) -> Engine:
    if not is_sqlite(url):
        engine = create_engine(url, pool_size=10, max_overflow=20)
        ping_when_idle(engine)
        attach_if_enabled(engine)
        return engine
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    attach_if_enabled(engine)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
