"""OTA_SQL_PROFILE: statements tallied per calling site and shape, and PostgreSQL's log read back."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text

from ota_server.db import statement_profile as sp


def test_shapes_fold_parameters_value_lists_and_in_lists() -> None:
    many = "INSERT INTO t (a, b) VALUES (%(a__0)s, %(b__0)s), (%(a__1)s, %(b__1)s), (%(a__2)s, %(b__2)s)"
    assert sp.normalise(many) == "INSERT INTO t (a, b) VALUES (...), ..."
    assert sp.normalise("SELECT x\n  FROM t WHERE id IN ($1, $2, $3)") == "SELECT x FROM t WHERE id IN (...)"
    assert sp.normalise("UPDATE t SET a=%(a)s WHERE id = %(id_1)s") == sp.normalise("UPDATE t SET a=$1 WHERE id = $2")


def test_a_profile_counts_statements_and_rows_and_is_written_as_json(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    profile = sp.StatementProfile()
    profile.attach(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT)"))
        conn.execute(text("INSERT INTO t (id, a) VALUES (:id, :a)"), [{"id": i, "a": "x"} for i in range(5)])
        for i in range(3):
            conn.execute(text("UPDATE t SET a = 'y' WHERE id = :id"), {"id": i})
    profile.dump(tmp_path / "profile.json")
    entries = {e["statement"]: e for e in json.loads((tmp_path / "profile.json").read_text())}
    update = entries["UPDATE t SET a = 'y' WHERE id = %s"]
    assert (update["count"], update["rows"]) == (3, 3)
    assert entries["INSERT INTO t (id, a) VALUES (...)"]["count"] == 1  # executemany: one call
    assert update["site"].startswith("?") or ":" in update["site"]
    assert "| all | 3 shapes |" in sp.ranking(list(entries.values()), cars=1, top=10)


def test_postgresql_log_lines_of_one_database_are_summed_per_shape(tmp_path: Path) -> None:
    log = tmp_path / "pg.log"
    log.write_text(
        "2026-12-04 22:58:49.994 UTC [1] postgres@bench LOG:  duration: 1.500 ms  parse <unnamed>: SELECT a\n"
        "\t FROM t WHERE id = $1\n"
        "2026-12-04 22:58:49.995 UTC [1] postgres@bench LOG:  duration: 2.500 ms  execute <unnamed>: SELECT a\n"
        "\t FROM t WHERE id = $1\n"
        "2026-12-04 22:58:49.995 UTC [1] postgres@bench DETAIL:  parameters: $1 = '7'\n"
        "2026-12-04 22:58:49.996 UTC [2] postgres@other LOG:  duration: 9.000 ms  statement: COMMIT\n"
        "2026-12-04 22:58:49.997 UTC [1] postgres@bench LOG:  duration: 0.250 ms  statement: COMMIT\n"
    )
    entries = sp.pg_log_entries(log, "bench", {"SELECT a FROM t WHERE id = %s": "services.x:read"})
    assert [(e["site"], e["statement"], e["count"]) for e in entries] == [
        ("services.x:read", "SELECT a FROM t WHERE id = %s", 1),
        ("?", "COMMIT", 1),
    ]
    assert abs(entries[0]["seconds"] - 0.004) < 1e-9 and abs(entries[1]["seconds"] - 0.00025) < 1e-9
