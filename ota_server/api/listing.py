"""The one list contract at the edge: ``limit``, ``cursor``, ``sort`` and ``format=csv``, declared once.

A list route takes :data:`Limit`, :data:`Cursor` and a :func:`sort_query` of its listing's keys,
plus its own filters, and answers ``{"items": [...], "next_cursor": ...}`` (``schemas.listing.Page``).
Every list also answers ``format=csv`` (:data:`CsvFormat`) with :func:`csv_stream`: every row (not
one page) under the same filters and sort, a header row, RFC 4180 quoting, and cells a spreadsheet
would run as a formula neutralised. :func:`exportable` gives a list that for free (one column per
field of its item, nested values as JSON, the pages read through the route itself); a list with
columns of its own (a campaign's cars, the owner-notification log) takes ``format`` itself.
"""

from __future__ import annotations

import csv
import functools
import inspect
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Annotated, Any, Literal, TypeVar, get_args

from fastapi import Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from ota_server.api.deps import RuntimeDep
from ota_server.schemas import Text
from ota_server.services.listing import EXPORT_CHUNK, MAX_CURSOR, Listing

Route = TypeVar("Route", bound=Callable[..., Any])

Limit = Annotated[int, Query(ge=1, le=1000, description="Rows per page")]
Cursor = Annotated[
    Text | None,
    Query(min_length=1, max_length=MAX_CURSOR, description="next_cursor of the previous page (same sort)"),
]
CsvFormat = Annotated[
    Literal["json", "csv"], Query(description="json: one page; csv: every row under the same filters, streamed")
]
CSV_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/json": {}, "text/csv": {}}}}


def sort_query(listing: Listing) -> Any:
    """The ``sort`` parameter of a list: one of its keys, ``-key`` for descending (422 names the allowed ones)."""
    names = sorted(listing.keys)
    return Query(
        max_length=64,
        description=f"Sort key, {listing.default} by default: {', '.join(names)}; prefix - for descending",
        json_schema_extra={"enum": [*names, *(f"-{n}" for n in names)]},
    )


def csv_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula is quoted (CSV injection); None is empty."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_lines(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """The header and each row as RFC 4180 lines (CRLF, quoted where needed), neutralised."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: Iterable[object]) -> str:
        writer.writerow(cells)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(columns)
    for row in rows:
        yield line([csv_cell(c) for c in row])


def csv_stream(
    sessions: sessionmaker[Session],
    columns: Sequence[str],
    rows: Callable[[Session], Iterable[Sequence[object]]],
    filename: str,
) -> StreamingResponse:
    """Stream ``rows`` (read in a session of its own: the request's ends before the body is sent)."""

    def lines() -> Iterator[str]:
        with sessions() as session:
            yield from csv_lines(columns, rows(session))

    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(lines(), media_type="text/csv; charset=utf-8", headers=headers)


def _cell(value: object) -> object:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else value


def exportable(filename: str) -> Callable[[Route], Route]:
    """A list route that also answers ``format=csv``: every row under its filters and sort.

    The route is called again for each page of :data:`~ota_server.services.listing.EXPORT_CHUNK`
    rows (the first in the request, so a 404 or a bad sort is an answer, not a broken stream; the
    rest in a session of their own). ``filename`` may name the route's path parameters.
    """

    def decorate(route: Route) -> Route:
        signature = inspect.signature(route, eval_str=True)
        item = get_args(signature.return_annotation.model_fields["items"].annotation)[0]
        columns = tuple(item.model_fields)
        added = [
            inspect.Parameter("format", inspect.Parameter.KEYWORD_ONLY, default="json", annotation=CsvFormat),
            inspect.Parameter("export_runtime", inspect.Parameter.KEYWORD_ONLY, annotation=RuntimeDep),
        ]

        @functools.wraps(route)
        def listed(*, format: str = "json", export_runtime: Any, **params: Any) -> Any:
            if format == "json":
                return route(**params)
            first = route(**{**params, "cursor": None, "limit": EXPORT_CHUNK})

            def rows(session: Session) -> Iterator[list[object]]:
                page: Any = first
                while True:
                    for row in page.items:
                        data = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
                        yield [_cell(data[c]) for c in columns]
                    if page.next_cursor is None:
                        return
                    page = route(**{**params, "session": session, "cursor": page.next_cursor, "limit": EXPORT_CHUNK})

            name = re.sub(r"[^A-Za-z0-9._-]", "_", filename.format(**params))  # a group's name may hold '"'
            return csv_stream(export_runtime.sessions, columns, rows, name)

        listed.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), *added]
        )
        return listed  # type: ignore[return-value]

    return decorate
