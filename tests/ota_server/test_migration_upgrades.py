"""Every revision upgrades a database that already holds data, with foreign keys enforced.

SQLite rebuilds tables for some ALTERs (Alembic batch mode); a referenced table must
survive that without losing rows or references.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text

from ota_server.db.migrate import upgrade
from tests.ota_server.test_migration_0006 import _ROWS


@pytest.mark.parametrize("start", ["0002", "0003", "0004", "0005", "0006"])
def test_sqlite_upgrade_from_each_revision_keeps_every_row(tmp_path: Path, start: str) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    upgrade(engine, start)
    with engine.begin() as conn:
        for statement in _ROWS:
            conn.execute(text(statement))
    upgrade(engine)
    with engine.begin() as conn:
        counts = {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("vehicles", "ecus", "releases", "recalls", "campaigns", "campaign_vehicles")
        }
        assert counts == {
            "vehicles": 1,
            "ecus": 1,
            "releases": 1,
            "recalls": 1,
            "campaigns": 1,
            "campaign_vehicles": 2,
        }
        assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1  # enforcement is back on
    engine.dispose()
