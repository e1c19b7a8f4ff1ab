"""0020: a car's campaign rows are found by VIN through an index, not a scan of every campaign's cars.

Ingest's manifests lock a car's rows in every campaign by VIN alone once per batch; the
primary key leads with the campaign, so without this index each batch scanned the table.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from ota_server.db.migrate import upgrade


def test_a_cars_campaign_rows_are_searched_by_the_vin_index(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                text("EXPLAIN QUERY PLAN SELECT campaign_id, state FROM campaign_vehicles WHERE vin = :vin"),
                {"vin": "1HGCM82633A004352"},
            )
        )
    engine.dispose()
    assert "ix_campaign_vehicles_vin" in plan, plan
