"""``update_rows``: one UPDATE from unnested arrays on PostgreSQL does what the executemany does elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Engine, String, Table, event, or_, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ota_server.db.models import UtcDateTime
from ota_server.db.session import make_engine
from ota_server.db.update_rows import update_rows


class _Base(DeclarativeBase):
    pass


class _Car(_Base):
    __tablename__ = "update_rows_probe"

    fleet: Mapped[int] = mapped_column(primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(200))
    seen: Mapped[datetime | None] = mapped_column(UtcDateTime())
    retry: Mapped[datetime | None] = mapped_column(UtcDateTime())


_TABLE = cast(Table, _Car.__table__)
T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/u.db"
    engine = make_engine(url)
    _Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            _Car(fleet=f, vin=f"V{n:016d}", state="pending", detail=None, seen=T0, retry=T0)
            for f in (1, 2)
            for n in range(5)
        )
        session.commit()
    yield engine
    engine.dispose()


def _cars(engine: Engine) -> dict[tuple[int, str], tuple[Any, ...]]:
    with Session(engine) as session:
        return {
            (c.fleet, c.vin): (c.state, c.detail, c.seen, c.retry)
            for c in session.scalars(select(_Car).order_by(_Car.fleet, _Car.vin))
        }


def test_each_row_takes_its_own_values_and_the_constants_and_no_other_row_moves(engine: Engine) -> None:
    before = _cars(engine)
    zone = timezone(timedelta(hours=2))
    rows: list[dict[str, Any]] = [
        {
            "fleet": 1,
            "vin": "V0000000000000001",
            "state": "remedied",
            "detail": "quote'\"\ttab",
            "seen": T0 + timedelta(1),
        },
        {
            "fleet": 2,
            "vin": "V0000000000000001",
            "state": "failed",
            "detail": None,
            "seen": datetime(2026, 12, 6, tzinfo=zone),
        },
        {"fleet": 1, "vin": "V0000000000000003", "state": "ünïcode €", "detail": "", "seen": None},
    ]
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with Session(engine) as session:
        update_rows(session, _TABLE, rows, key=("fleet", "vin"), also={"retry": None})
        update_rows(session, _TABLE, [], key=("fleet", "vin"))  # nothing to do: no statement
        session.commit()
    after = _cars(engine)
    for row in rows:
        k = (row["fleet"], row["vin"])
        assert after[k] == (row["state"], row["detail"], row["seen"], None), k
    assert {k: v for k, v in after.items() if k not in {(r["fleet"], r["vin"]) for r in rows}} == {
        k: v for k, v in before.items() if k not in {(r["fleet"], r["vin"]) for r in rows}
    }
    assert (
        len([s for s in statements if s.lstrip().upper().startswith("UPDATE")]) == 1
    )  # one statement (or executemany)


def test_a_row_the_condition_refuses_is_left_as_it_was(engine: Engine) -> None:
    rows = [
        {"fleet": 1, "vin": "V0000000000000000", "seen": T0 + timedelta(hours=1)},  # later: moves
        {"fleet": 1, "vin": "V0000000000000001", "seen": T0 - timedelta(hours=1)},  # earlier: stays
    ]
    with Session(engine) as session:
        update_rows(
            session,
            _TABLE,
            rows,
            key=("fleet", "vin"),
            only_if=lambda table, given: or_(table.c.seen.is_(None), table.c.seen < given("seen")),
        )
        session.commit()
    after = _cars(engine)
    assert after[(1, "V0000000000000000")][2] == T0 + timedelta(hours=1)
    assert after[(1, "V0000000000000001")][2] == T0
