"""Migration 0006 on a database that already holds a launched campaign (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ota_server.db.migrate import upgrade

_ROWS = [
    "INSERT INTO vehicles (id, vin, model, model_year, production_date, online, created_at) "
    "VALUES (1, '1HGCM82633A004352', 'Sedan', 2022, '2022-05-01', false, '2026-01-01T00:00:00+00:00')",
    'INSERT INTO ecus (id, vehicle_id, serial, hardware_id, installed_version, "primary") '
    "VALUES (1, 1, 'S-1', 'ecu-main', '1.0.0', true)",
    "INSERT INTO releases (id, hardware_id, version, release_counter, target_path, length, sha256, created_at) "
    "VALUES (1, 'ecu-main', '1.1.0', 2, 'ecu-main/1.1.0.otab', 10, 'ab', '2026-01-01T00:00:00+00:00')",
    "INSERT INTO recalls (id, campaign_number, title, defect, safety_risk, remedy, release_id, population, "
    "created_at) VALUES (1, '24V-001', 't', 'd', 's', 'r', 1, '{}', '2026-01-01T00:00:00+00:00')",
    "INSERT INTO campaigns (id, recall_id, release_id, population, launched_at) "
    "VALUES (1, 1, 1, 2, '2026-01-01T00:00:00+00:00')",
    "INSERT INTO campaign_vehicles (campaign_id, vin, nonce, state, attempt, updated_at) VALUES "
    "(1, '1HGCM82633A004352', 'n1', 'installing', 1, '2026-01-02T00:00:00+00:00'), "
    "(1, '1HGCM82633A004353', 'n2', 'pending', 0, '2026-01-01T00:00:00+00:00')",
    "INSERT INTO campaign_events (campaign_id, vin, attempt, state, received_at) "
    "VALUES (1, '1HGCM82633A004352', 1, 'installing', '2026-01-02T00:00:00+00:00')",
]


def _migrate_with_rows(url: str) -> None:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        from sqlalchemy import event

        event.listen(engine, "connect", lambda conn, _: conn.execute("PRAGMA foreign_keys=ON"))
    upgrade(engine, "0005")
    with engine.begin() as conn:
        for statement in _ROWS:
            conn.execute(text(statement))
    upgrade(engine)
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT vin, state, progress_rank, notified_at IS NOT NULL, wave FROM campaign_vehicles ORDER BY vin")
        ).all()
        assert [tuple(r) for r in rows] == [
            ("1HGCM82633A004352", "installing", 5, True, 0),
            ("1HGCM82633A004353", "pending", -1, True, 0),
        ]
        campaign = conn.execute(text("SELECT status, launch_population, current_wave FROM campaigns")).one()
        assert tuple(campaign) == ("active", 2, 0)
        # each deferral is its own event now
        for deferrals in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO campaign_events (campaign_id, vin, attempt, deferrals, state, received_at, source) "
                    "VALUES (1, '1HGCM82633A004352', 1, :d, 'deferred', '2026-01-03T00:00:00+00:00', 'car')"
                ),
                {"d": deferrals},
            )
        assert conn.execute(text("SELECT dynamic, remedy_type FROM recalls")).one()[1] == "ota"
    engine.dispose()


def test_0006_upgrades_a_populated_sqlite_database(tmp_path: Path) -> None:
    _migrate_with_rows(f"sqlite:///{tmp_path / 'ota.db'}")


@pytest.mark.services
def test_0006_upgrades_a_populated_postgres_database(postgres_url: str) -> None:
    _migrate_with_rows(postgres_url)
