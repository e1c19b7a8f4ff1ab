"""``insert_rows``: PostgreSQL's COPY stores the very rows SQLAlchemy's INSERT stores (issue 19)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    insert,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ota_server.db.copy_rows import insert_rows
from ota_server.db.models import UtcDateTime
from ota_server.db.session import make_engine

pytestmark = pytest.mark.services


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "copy_rows_probe"

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    detail: Mapped[str] = mapped_column(String(200), default="a default", server_default="")
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    big: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)


class _Unique(_Base):
    __tablename__ = "copy_rows_unique_probe"
    __table_args__ = (UniqueConstraint("text"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(64))


def _rows(prefix: str) -> list[dict[str, Any]]:
    at = datetime(2026, 12, 5, 3, 30, 1, 123456, tzinfo=timezone(timedelta(hours=2)))
    texts = ["plain", "tab\there", "new\nline", "back\\slash", "quote'\"", "ünïcode €", "\\N", ""]
    return [
        {
            "text": f"{prefix}{t}",
            "data": bytes(range(256)) + t.encode(),
            "at": at + timedelta(seconds=i),
            "payload": {"t": t, "n": [i, None, True], "f": 1.5},
            "count": None if i % 2 else -i,
            "big": None if i % 3 else 2**40 + i,
            "note": None if i % 2 else f"a note {t}",
        }
        for i, t in enumerate(texts)
    ]


def _sharing(prefix: str) -> list[dict[str, Any]]:
    """:func:`_rows` with some rows holding the very same timestamp and payload objects (as a batch's
    rows share its time): runs of one object, another, and the first again."""
    rows = _rows(prefix)
    first, second = rows[0], rows[3]
    for index in (1, 2, 6):
        rows[index]["at"], rows[index]["payload"] = first["at"], first["payload"]
    rows[4]["at"], rows[4]["payload"] = second["at"], second["payload"]
    return rows


@pytest.mark.parametrize("rows", [_rows, _sharing], ids=["each its own values", "values shared by rows"])
def test_copy_stores_what_insert_stores(postgres_url: str, rows: Any) -> None:
    engine = make_engine(postgres_url)
    try:
        _Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.execute(insert(_Row), rows("insert:"))
            insert_rows(session, _Row, rows("copy:"))
            session.commit()
            stored = session.execute(
                select(
                    _Row.text, _Row.data, _Row.at, _Row.detail, _Row.payload, _Row.count, _Row.big, _Row.note
                ).order_by(_Row.id)
            ).all()
        by_insert = [(t.removeprefix("insert:"), *rest) for t, *rest in stored if t.startswith("insert:")]
        by_copy = [(t.removeprefix("copy:"), *rest) for t, *rest in stored if t.startswith("copy:")]
        assert len(by_copy) == 8
        assert by_copy == by_insert
        assert by_copy[0][3] == "a default"  # the Python-side default, as the INSERT gives it
        assert by_copy[0][2] == datetime(2026, 12, 5, 1, 30, 1, 123456, tzinfo=UTC)
    finally:
        _Base.metadata.drop_all(engine)
        engine.dispose()


def test_a_row_stored_first_is_sqlalchemys_integrity_error_as_for_the_insert(postgres_url: str) -> None:
    """Callers (ingest's retry on a race with another replica) catch SQLAlchemy's errors, not the driver's."""
    engine = make_engine(postgres_url)
    try:
        _Base.metadata.create_all(engine)
        with Session(engine) as session:
            insert_rows(session, _Unique, [{"text": "first"}])
            session.commit()
            with pytest.raises(IntegrityError):
                insert_rows(session, _Unique, [{"text": "second"}, {"text": "first"}])
            session.rollback()
            insert_rows(session, _Unique, [{"text": "second"}])  # the session is usable again
            session.commit()
            assert session.scalars(select(_Unique.text).order_by(_Unique.id)).all() == ["first", "second"]
    finally:
        _Base.metadata.drop_all(engine)
        engine.dispose()


def test_listeners_see_the_copy_as_an_executemany_of_its_rows(postgres_url: str) -> None:
    """Statement profiles and row counters (``bench.ingest_cost``) count what COPY writes."""
    engine = make_engine(postgres_url)
    seen: list[tuple[str, int, bool]] = []

    def before(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, many: bool) -> None:
        seen.append((sql.split()[0], len(params) if many else 1, many))

    try:
        _Base.metadata.create_all(engine)
        event.listen(engine, "before_cursor_execute", before)
        with Session(engine) as session:
            insert_rows(session, _Unique, [{"text": "a"}, {"text": "b"}, {"text": "c"}])
            session.commit()
        assert ("COPY", 3, True) in seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
        _Base.metadata.drop_all(engine)
        engine.dispose()


class _Narrow(_Base):
    """The model says BIGINT; the table (as a migration made it) has INTEGER."""

    __tablename__ = "copy_rows_narrow_probe"

    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


def test_each_value_is_written_as_the_type_the_database_has_not_the_models(postgres_url: str) -> None:
    """The binary stream must match the table's column types exactly: read from the catalog, since
    the migrations made the tables (an int8 sent for an int4 column is refused)."""
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS copy_rows_narrow_probe"))
            connection.execute(text("CREATE TABLE copy_rows_narrow_probe (id SERIAL PRIMARY KEY, n INTEGER)"))
        with Session(engine) as session:
            insert_rows(session, _Narrow, [{"n": 7}, {"n": -2_000_000_000}])
            session.commit()
            assert session.scalars(select(_Narrow.n).order_by(_Narrow.id)).all() == [7, -2_000_000_000]
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS copy_rows_narrow_probe"))
        engine.dispose()
