"""A launch and a fleet import analyze the tables they filled (PostgreSQL), so the planner knows their size.

Without it a freshly loaded ``campaign_ecus``/``campaign_vehicles`` had no statistics until
autovacuum came by, and progress's per-ECU join ran as a nested loop over both (issue 19).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from ota_server.db import statistics
from tests.ota_server.conftest import make_settings, running
from tests.ota_server.helpers import launched, vin

pytestmark = pytest.mark.services

LOADED = ("vehicles", "ecus", "campaign_vehicles", "campaign_ecus")


def _reltuples(url: str) -> dict[str, float]:
    """What the planner takes each table's size to be (-1: never analyzed nor vacuumed)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT relname, reltuples FROM pg_class WHERE relname = ANY(:names)"), {"names": list(LOADED)}
            )
            return {name: float(n) for name, n in rows}
    finally:
        engine.dispose()


async def test_a_launch_and_an_import_analyze_what_they_loaded(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statistics, "BULK_ROWS", 3)  # three cars stand for a fleet
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        campaign = await launched(env.client, [vin(i) for i in range(1, 4)])
        assert campaign["population"] == 3
    assert _reltuples(postgres_url) == dict.fromkeys(LOADED, 3.0)


async def test_a_small_load_is_left_to_autovacuum(tmp_path: Path, postgres_url: str) -> None:
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        await launched(env.client, [vin(i) for i in range(1, 4)])
    assert _reltuples(postgres_url) == dict.fromkeys(LOADED, -1.0)


def test_only_the_bulk_loaded_tables_are_named() -> None:
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connected to
    with Session(engine) as session, pytest.raises(ValueError, match="not a bulk-loaded table"):
        statistics.analyze_loaded(session, 10_000, "vehicles; DROP TABLE vehicles")
