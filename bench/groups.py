"""What a saved group's count costs when read: the filter run over a fleet of N cars.

Builds a fleet (default 30,000 cars, one ECU each, a quarter tagged ``pilot``, a third
reported by a manifest) in a fresh database (default: a SQLite file in a temp directory;
``--database-url`` for PostgreSQL), then times :func:`ota_server.services.group_filter.members`
and :func:`~ota_server.services.group_filter.count` (what reading a group runs) for a few
filters, each the median of several runs.

    .venv/bin/python -m bench.groups --json bench/out/groups.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import Session

from firmware_bundles.vin import make_vin
from ota_server.db.models import Base, Ecu, Vehicle, VehicleTag
from ota_server.schemas.groups import GroupFilter
from ota_server.services import group_filter

FILTERS: dict[str, dict[str, Any]] = {
    "every car": {},
    "model + years": {"models": ["Sedan"], "model_years": {"min": 2021, "max": 2023}},
    "tag (all of)": {"tags_all": ["pilot"]},
    "tags (any of) + model": {"models": ["Sedan"], "tags_any": ["pilot", "depot-9"]},
    "version <= 1.0.0 (installed)": {"installed_versions": {"max": "1.0.0"}},
    "version <= 1.0.0 (reported)": {"installed_versions": {"max": "1.0.0", "basis": "reported"}},
}


def build(session: Session, cars: int) -> None:
    now = datetime.now(UTC)
    vins = [make_vin("1HG", "CM826", "N", "A", n) for n in range(1, cars + 1)]
    session.execute(
        insert(Vehicle),
        [
            {
                "id": n,
                "vin": v,
                "make": "Acme",
                "model": "Sedan" if n % 3 else "Coupe",
                "model_year": 2019 + n % 6,
                "production_date": date(2019 + n % 6, 1, 1),
                "online": False,
                "created_at": now,
            }
            for n, v in enumerate(vins, start=1)
        ],
    )
    session.execute(
        insert(Ecu),
        [
            {
                "vehicle_id": n,
                "serial": f"S-{n}",
                "hardware_id": "ecu-main",
                "installed_version": "1.1.0" if n % 5 == 0 else "1.0.0",
                "declared_version": "1.0.0",
                "primary": True,
                "reported_at": now if n % 3 == 0 else None,
            }
            for n in range(1, cars + 1)
        ],
    )
    session.execute(
        insert(VehicleTag),
        [{"vehicle_id": n, "tag": "pilot", "created_at": now, "created_by": "bench"} for n in range(1, cars + 1, 4)],
    )
    session.commit()


def measure(url: str, cars: int, runs: int) -> list[dict[str, Any]]:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    results = []
    with Session(engine) as session:
        build(session, cars)
        if engine.dialect.name == "postgresql":
            session.execute(text("ANALYZE"))  # planner statistics, as autovacuum would gather on a live fleet
            session.commit()
        for name, raw in FILTERS.items():
            spec = GroupFilter.model_validate(raw)
            timed = {}
            for label, run in (("count", group_filter.count), ("members", group_filter.members)):
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    run(session, spec)
                    times.append(time.perf_counter() - start)
                timed[label] = statistics.median(times) * 1e3
            results.append(
                {
                    "filter": name,
                    "cars": cars,
                    "members": group_filter.count(session, spec),
                    "count_ms": timed["count"],
                    "members_ms": timed["members"],
                }
            )
    Base.metadata.drop_all(engine)
    engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary directory")
    parser.add_argument("--json", type=Path, help="also save the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        results = measure(url, args.cars, args.runs)
    backend = url.split(":", 1)[0]
    print(f"{'filter':30} {'cars':>7} {'members':>8} {'count ms':>9} {'members ms':>11}   ({backend}, medians)")
    for row in results:
        print(
            f"{row['filter']:30} {row['cars']:>7} {row['members']:>8}",
            f"{row['count_ms']:>9.1f} {row['members_ms']:>11.1f}",
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"backend": backend, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
