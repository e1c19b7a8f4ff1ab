"""The one list contract at the edge: ``limit``, ``cursor``, ``sort`` and ``format=csv``, declared once.

A list route takes :data:`Limit`, :data:`Cursor` and a :func:`sort_query` of its listing's keys,
plus its own filters, and answers ``{"items": [...], "next_cursor": ...}`` (``schemas.listing.Page``).
Where an export makes sense it also takes :data:`CsvFormat` and answers :func:`csv_stream`: every
row (not one page) under the same filters, a header row, RFC 4180 quoting, and cells a
spreadsheet would run as a formula neutralised.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session, sessionmaker

from ota_server.schemas import Text
from ota_server.services.listing import MAX_CURSOR, Listing

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
