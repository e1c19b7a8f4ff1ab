"""The one list contract's engine: declared sort keys, opaque cursors and keyset pages.

Every list endpoint declares a :class:`Listing` (its sort keys and a unique tie breaker) and
hands its filtered ``select`` to :func:`page`. A page is ordered by the sort key then the tie
breaker, and the next page starts strictly after the last row's pair (keyset, no OFFSET), so
rows added between two pages are neither seen twice nor skip a row already passed.

A cursor is base64url JSON ``[scope, sort, key value, tie value]``: a cursor from another list,
another sort, or not from this server at all is an :class:`InvalidInput` (422) saying so.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, SQLColumnExpression, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from ota_server.errors import InvalidInput

T = TypeVar("T")

# Where a null time sorts: after every real one (ascending), so a keyset over it stays total.
LATEST = datetime(9999, 12, 31, tzinfo=UTC)
MAX_CURSOR = 500
EXPORT_CHUNK = 1000  # rows per query while a CSV export walks every page
SCAN_CHUNK = 500  # rows read per query while a filter only Python can judge skips rows

Kind = type[int] | type[str] | type[datetime]


@dataclass(frozen=True)
class SortKey:
    """One way to order a list: the SQL expression, the same value read from a row, and its type."""

    column: SQLColumnExpression[Any]
    value: Callable[[Any], Any]
    kind: Kind


@dataclass(frozen=True)
class Listing:
    """A list endpoint's sort keys (by the name clients give), its unique tie breaker and default sort."""

    scope: str
    keys: Mapping[str, SortKey]
    tie: SortKey
    default: str

    def order(self, sort: str | None) -> tuple[str, SortKey, bool]:
        """The sort a client asked for (``key`` or ``-key``): its name, key and whether descending."""
        text = sort or self.default
        name = text.removeprefix("-")
        key = self.keys.get(name)
        if key is None:
            allowed = ", ".join(sorted(self.keys))
            raise InvalidInput(f"sort: {name!r} is not a sort key here; use one of {allowed} (prefix - for descending)")
        return text, key, text.startswith("-")


def column(attribute: InstrumentedAttribute[Any], kind: Kind) -> SortKey:
    """A sort key on one mapped column, read back from a row by the column's name."""
    name = attribute.key
    return SortKey(attribute, lambda row: getattr(row, name), kind)


def by_id(scope: str, id_column: InstrumentedAttribute[int], *, default: str | None = None, **keys: SortKey) -> Listing:
    """A list whose tie breaker is its integer primary key (itself a sort key, the default one unless told)."""
    tie = column(id_column, int)
    return Listing(scope, {id_column.key: tie, **keys}, tie, default or id_column.key)


def _encode_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _decode_value(raw: Any, kind: Kind) -> Any:
    if kind is datetime:
        if not isinstance(raw, str):
            raise ValueError
        moment = datetime.fromisoformat(raw)
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if kind is int and (not isinstance(raw, int) or isinstance(raw, bool)):
        raise ValueError
    if kind is str and not isinstance(raw, str):
        raise ValueError
    return raw


def encode_cursor(listing: Listing, sort: str, values: Sequence[Any]) -> str:
    text = json.dumps([listing.scope, sort, *(_encode_value(v) for v in values)], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(listing: Listing, sort: str, cursor: str, kinds: Sequence[Kind]) -> list[Any]:
    """The key values a page ended on; InvalidInput for a cursor this list did not hand out for this sort."""
    foreign = InvalidInput("cursor: not a cursor of this list (pass next_cursor back as it came)")
    if len(cursor) > MAX_CURSOR:
        raise foreign
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise foreign from None
    if not isinstance(data, list) or len(data) < 2 or data[0] != listing.scope:
        raise foreign
    if data[1] != sort:
        raise InvalidInput(f"cursor: it continues the sort {data[1]!r}, not {sort!r} (start again without a cursor)")
    if len(data) != 2 + len(kinds):
        raise foreign
    try:
        return [_decode_value(raw, kind) for raw, kind in zip(data[2:], kinds, strict=True)]
    except (TypeError, ValueError):
        raise foreign from None


def _after(keys: Sequence[SortKey], values: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the (key, tie) order."""
    (first, *rest), (value, *more) = keys, values
    beyond: ColumnElement[bool] = first.column < value if descending else first.column > value
    if not rest:
        return beyond
    return or_(beyond, and_(first.column == value, _after(rest, more, descending)))


def page(
    session: Session,
    query: Select[T],
    listing: Listing,
    sort: str | None,
    cursor: str | None,
    limit: int,
    keep: Callable[[T], bool] | None = None,
) -> tuple[list[T], str | None]:
    """Up to ``limit`` rows of ``query`` after ``cursor`` in the asked order, and the next page's cursor.

    ``keep``: a test only Python can judge (a recall's population before launch); rows failing it
    are skipped, read :data:`SCAN_CHUNK` at a time, and the cursor still names the last row kept.
    """
    name, key, descending = listing.order(sort)
    keys = [key] if key is listing.tie else [key, listing.tie]
    after = decode_cursor(listing, name, cursor, [k.kind for k in keys]) if cursor else None
    order = [k.column.desc() if descending else k.column.asc() for k in keys]
    found: list[T] = []
    while len(found) <= limit:
        want = limit + 1 - len(found) if keep is None else SCAN_CHUNK
        batch = list(
            session.scalars(
                (query if after is None else query.where(_after(keys, after, descending))).order_by(*order).limit(want)
            ).all()
        )
        found += batch if keep is None else [row for row in batch if keep(row)]
        if len(batch) < want or keep is None:
            break
        after = [k.value(batch[-1]) for k in keys]
    if len(found) <= limit:
        return found, None
    last = found[limit - 1]
    return found[:limit], encode_cursor(listing, name, [k.value(last) for k in keys])


def every(
    session: Session, query: Select[T], listing: Listing, sort: str | None, chunk: int = EXPORT_CHUNK
) -> Iterator[list[T]]:
    """Every row of ``query`` in the asked order, a keyset page at a time (an export's walk)."""
    cursor: str | None = None
    while True:
        rows, cursor = page(session, query, listing, sort, cursor, chunk)
        yield rows
        if cursor is None:
            return
