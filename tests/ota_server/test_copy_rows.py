"""``insert_rows``: PostgreSQL's COPY stores the very rows SQLAlchemy's INSERT stores (issue 19)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import JSON, LargeBinary, String, UniqueConstraint, event, insert, select
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
        }
        for i, t in enumerate(texts)
    ]


def test_copy_stores_what_insert_stores(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        _Base.metadata.create_all(engine)
        with Session(engine) as session:
            session.execute(insert(_Row), _rows("insert:"))
            insert_rows(session, _Row, _rows("copy:"))
            session.commit()
            stored = session.execute(
                select(_Row.text, _Row.data, _Row.at, _Row.detail, _Row.payload).order_by(_Row.id)
            ).all()
        by_insert = [(t.removeprefix("insert:"), d, a, x, p) for t, d, a, x, p in stored if t.startswith("insert:")]
        by_copy = [(t.removeprefix("copy:"), d, a, x, p) for t, d, a, x, p in stored if t.startswith("copy:")]
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
