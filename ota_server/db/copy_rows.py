"""Many rows into one table at once: PostgreSQL's ``COPY``, elsewhere SQLAlchemy's executemany.

``session.execute(insert(Model), rows)`` on psycopg is an executemany: one ``Execute`` per row
in a pipeline, ~30 us of Python per row on the server's GIL. A launch's notifying ticks write
three Director files per car and the delivery bookkeeping two log rows per notice, so at
30,000 cars that was seconds of the one GIL the event loop also publishes on (issue 19).
``COPY ... FROM STDIN`` in the session's own connection (so its own transaction) sends the same
rows as one stream; each value goes through its column's SQLAlchemy bind processing first (the
JSON serializer, ``UtcDateTime``), and a column left out gets its Python-side default, so the
stored rows are the ones the ``INSERT`` stored.

The stream is PostgreSQL's binary format, each column dumped as the type the table has in the
database (read from ``pg_attribute`` once per engine and table: the migrations, not the models,
made the tables; a migration that changes a column's type comes with new code, so a restart). In
the text format psycopg spent ~13 us of Python per row quoting and
hex-escaping: a 30,000-car launch's 90,000 Director files took 1.2 s of the GIL on the
approval's path to the first notice; binary takes 0.15 s (psycopg's C dumpers, no escaping).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, insert, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session

# Each table's column types in the database, by engine: {table: {column: type oid}}.
_COLUMN_TYPES: weakref.WeakKeyDictionary[Engine, dict[str, dict[str, int]]] = weakref.WeakKeyDictionary()
_TYPES_LOCK = threading.Lock()
_NOTHING = object()  # no value seen yet in a column


def _column_types(connection: Connection, table: str) -> dict[str, int]:
    """``table``'s columns and their type oids as the database has them (cached per engine)."""
    with _TYPES_LOCK:
        known = _COLUMN_TYPES.get(connection.engine, {}).get(table)
    if known is not None:
        return known
    rows = connection.execute(
        text(
            "SELECT attname, atttypid FROM pg_attribute"
            " WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 AND NOT attisdropped"
        ),
        {"table": f'"{table}"'},
    )
    found = {str(name): int(oid) for name, oid in rows}
    with _TYPES_LOCK:
        _COLUMN_TYPES.setdefault(connection.engine, {})[table] = found
    return found


def insert_rows(session: Session, model: type[DeclarativeBase], rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts keyed by column name, all with the same keys) into ``model``'s table."""
    table = cast(Table, model.__table__)
    if not rows:
        return
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        session.execute(insert(table), list(rows))
        return
    dialect = bind.dialect
    given = list(rows[0].keys())
    defaults: dict[str, Any] = {}
    for column in table.columns:
        if column.name in given or column.default is None:
            continue
        default = column.default
        if not getattr(default, "is_scalar", False):  # a callable or SQL default: the INSERT's way
            session.execute(insert(table), list(rows))
            return
        defaults[column.name] = default.arg  # type: ignore[attr-defined]
    names = given + list(defaults)
    processors: list[Callable[[Any], Any] | None] = [
        table.columns[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    ]
    session.flush()
    connection = session.connection()
    oids = _column_types(connection, table.name)
    raw: Any = connection.connection.driver_connection
    columns = ", ".join(f'"{name}"' for name in names)
    sql = f'COPY "{table.name}" ({columns}) FROM STDIN (FORMAT BINARY)'
    dbapi: Any = dialect.loaded_dbapi
    # Listeners (statement profiles, row counters) see the COPY as the executemany it replaces.
    observed = connection._has_events or connection.engine._has_events
    try:
        with raw.cursor() as cursor:
            if observed:
                connection.dispatch.before_cursor_execute(connection, cursor, sql, rows, None, True)
            with cursor.copy(sql) as copy:
                copy.set_types([oids[name] for name in names])
                extra = list(defaults.values())
                # Only the columns with a bind processor (the timestamps) are touched, and a value shared by
                # every row (a batch's timestamp) is processed once: each such column's last value and what it
                # became, reused while the next row holds the same object.
                processed = [(index, process) for index, process in enumerate(processors) if process is not None]
                last: dict[int, tuple[Any, Any]] = {index: (_NOTHING, None) for index, _ in processed}
                for row in rows:
                    values = [row[name] for name in given] + extra
                    for index, process in processed:
                        value = values[index]
                        if value is None:
                            continue
                        seen, done = last[index]
                        if seen is not value:
                            done = process(value)
                            last[index] = (value, done)
                        values[index] = done
                    copy.write_row(values)
            if observed:
                connection.dispatch.after_cursor_execute(connection, cursor, sql, rows, None, True)
    except dbapi.Error as exc:
        # The driver's own error, as SQLAlchemy would have raised it for the INSERT (IntegrityError
        # for a unique row stored first, OperationalError for a lost connection): callers catch those.
        raise DBAPIError.instance(
            sql, None, exc, dbapi.Error, connection_invalidated=dialect.is_disconnect(exc, raw, None)
        ) from exc
