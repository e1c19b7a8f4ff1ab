"""The PostgreSQL pool: pinged only after idling, and a connection that died while idle is replaced."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from sqlalchemy import Engine, create_engine, text

from ota_server.db.session import ping_when_idle


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url, pool_size=2, max_overflow=0)
    ping_when_idle(engine, idle_s=0.2)
    yield engine
    engine.dispose()


class _Recording:
    """A driver cursor that notes the checkout hook's ping (psycopg's cursor attributes are read-only)."""

    def __init__(self, cursor: Any, pings: list[str]) -> None:
        self._cursor, self._pings = cursor, pings

    def execute(self, query: object, *args: Any, **kwargs: Any) -> Any:
        if str(query).strip() == "SELECT 1":
            self._pings.append(str(query))
        return self._cursor.execute(query, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_killed_while_idle_is_replaced_on_checkout(engine: Engine, postgres_url: str) -> None:
    pid = _backend_pid(engine)
    killer = create_engine(postgres_url)
    with killer.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one() is True
    killer.dispose()
    time.sleep(0.3)  # past idle_s: the checkout pings, finds it dead, and the pool opens another
    assert _backend_pid(engine) != pid


def test_a_connection_in_steady_use_is_not_pinged(engine: Engine) -> None:
    pings: list[str] = []
    real_connect = cast("Callable[[], Any]", engine.pool._creator)  # create_engine's connect (record optional)

    def tracking_creator() -> Any:
        dbapi = real_connect()
        real_cursor = dbapi.cursor

        def cursor(*args: Any, **kwargs: Any) -> _Recording:
            return _Recording(real_cursor(*args, **kwargs), pings)

        dbapi.cursor = cursor
        return dbapi

    engine.pool._creator = tracking_creator
    engine.dispose()
    for _ in range(20):  # back to back: never idle long enough to be pinged
        _backend_pid(engine)
    assert pings == []
    time.sleep(0.3)
    _backend_pid(engine)
    assert pings == ["SELECT 1"]
