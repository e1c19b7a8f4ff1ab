"""Many rows of one table updated at once: on PostgreSQL one ``UPDATE ... FROM unnest(...)``,
elsewhere SQLAlchemy's executemany of the same per-row UPDATE.

An executemany on psycopg is one ``Execute`` per row in a pipeline: PostgreSQL binds, plans and
runs the statement once per car, which at ingest's batch of 500 messages was most of its CPU
for the cars' state rows and ``last_seen`` (issue 19). One array per column, unnested into a
derived table joined on the key, is one statement, one plan and one index probe per row.
Each value goes through its column's bind processing (``UtcDateTime``) as in the executemany.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, bindparam, column, func, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

# The row's new values by column name -> an extra condition (e.g. "only forward")
Condition = Callable[[Table, Callable[[str], ColumnElement[Any]]], ColumnElement[bool]]


def update_rows(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    also: Mapping[str, Any] | None = None,
    only_if: Condition | None = None,
) -> None:
    """Set each row of ``table`` found by ``key``'s columns to the other values of its entry in
    ``rows`` (dicts keyed by column name, all with the same keys, one per table row), plus the
    constants ``also``; a row for which ``only_if(table, value_of)`` is false is left as it is."""
    if not rows:
        return
    names = list(rows[0].keys())
    if session.get_bind().dialect.name == "postgresql":
        source = (
            func.unnest(
                *(bindparam(f"a_{name}", [r[name] for r in rows], type_=ARRAY(table.c[name].type)) for name in names)
            )
            .table_valued(*(column(name, table.c[name].type) for name in names))
            .render_derived(name="given")
        )
        statement = _statement(table, key, names, also, only_if, lambda name: source.c[name])
        session.execute(statement)
        return
    statement = _statement(table, key, names, also, only_if, lambda name: bindparam(f"b_{name}"))
    session.execute(statement, [{f"b_{name}": r[name] for name in names} for r in rows])


def _statement(
    table: Table,
    key: Sequence[str],
    names: Sequence[str],
    also: Mapping[str, Any] | None,
    only_if: Condition | None,
    value_of: Callable[[str], ColumnElement[Any]],
) -> Any:
    where = [table.c[name] == value_of(name) for name in key]
    if only_if is not None:
        where.append(only_if(table, value_of))
    values: dict[str, Any] = {name: value_of(name) for name in names if name not in key}
    return update(table).where(and_(*where)).values({**values, **(also or {})})


def rows_sent(statement: str, params: Any, many: bool) -> int:
    """The rows a statement carries as an engine's ``before_cursor_execute`` listener sees it (for
    counters): an executemany's parameter sets, an UPDATE from unnested arrays their length, else 1."""
    if many:
        return len(params)
    if "unnest(" in statement and isinstance(params, Mapping):
        return next((len(v) for v in params.values() if isinstance(v, list)), 1)
    return 1
