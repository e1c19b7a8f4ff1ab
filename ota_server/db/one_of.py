"""``column IN (values)`` with one parameter on PostgreSQL: ``column = ANY(:values)``.

SQLAlchemy expands ``column.in_(values)`` into one placeholder per value, and psycopg then
rewrites that statement text placeholder by placeholder, uncached for long statements: a
launch's notifying tick, whose statements name thousands of VINs each, spent ~0.1 ms per car
there, on the server's one GIL (bench/notify_path.py with ``--profile``, issue 19). One array
parameter keeps the statement's text the same whatever the list's length. SQLite (no arrays)
keeps the expanding ``IN``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Boolean, ColumnElement, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal


class OneOf(ColumnElement[bool]):
    """``column`` is one of ``values``: both forms are built, the dialect's compiler renders one."""

    type = Boolean()
    _is_implicitly_boolean = True
    inherit_cache = True
    _traverse_internals = [
        ("listed", InternalTraversal.dp_clauseelement),
        ("array", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], values: Iterable[Any]) -> None:
        given = list(values)
        self.listed = column.in_(given)
        self.array = column == any_(bindparam(None, given, type_=ARRAY(column.type)))


def one_of(column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """``column IN values``, as one array parameter on PostgreSQL."""
    return OneOf(column, values)


@compiles(OneOf)
def _listed(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.listed, **kw)


@compiles(OneOf, "postgresql")
def _array(element: OneOf, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.array, **kw)
