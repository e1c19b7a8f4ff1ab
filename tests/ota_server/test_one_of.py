"""``one_of``: ``IN`` on SQLite, one array parameter on PostgreSQL, the same rows either way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, MetaData, String, Table, and_, select
from sqlalchemy.dialects import postgresql

from ota_server.db.one_of import one_of
from ota_server.db.session import make_engine

_META = MetaData()
_CARS = Table("one_of_probe", _META, Column("vin", String(17), primary_key=True), Column("model", String(20)))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/o.db"
    engine = make_engine(url)
    _META.create_all(engine)
    with engine.begin() as conn:
        conn.execute(_CARS.insert(), [{"vin": f"V{n:016d}", "model": "a" if n % 2 else "b"} for n in range(50)])
    yield engine
    engine.dispose()


def test_the_rows_named_and_no_others_whatever_the_lists_length(engine: Engine) -> None:
    with engine.connect() as conn:
        for wanted in ([1, 2, 99], [3], [], list(range(0, 50, 3))):
            vins = [f"V{n:016d}" for n in wanted]
            query = select(_CARS.c.vin).where(one_of(_CARS.c.vin, vins)).order_by(_CARS.c.vin)
            assert conn.execute(query).scalars().all() == sorted(v for v in vins if int(v[1:]) < 50)
        both = select(_CARS.c.vin).where(and_(_CARS.c.model == "a", one_of(_CARS.c.vin, ["V0000000000000001"])))
        assert conn.execute(both).scalars().all() == ["V0000000000000001"]


def test_postgresql_gets_one_array_parameter_not_one_per_value() -> None:
    query = select(_CARS.c.vin).where(one_of(_CARS.c.vin, [f"V{n:016d}" for n in range(1000)]))
    compiled = query.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]
    assert "= ANY (" in str(compiled) and len(compiled.params) == 1
    assert "IN (" in str(query.compile())  # the default dialect (SQLite's way)
