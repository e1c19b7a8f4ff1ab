"""Ingest's report-key lookup per batch reads the batch's cars by VIN, whatever the statistics say.

Found at 5,000-30,000 cars (issue 19): the lookup's WHERE held ``report_keyid IS NOT NULL`` as well
as the VIN list. A bench (or a fleet import) analyzes ``vehicles`` at registration, before any car
has a key, so PostgreSQL took the predicate for "no rows" and walked ``ix_vehicles_report_keyid``
over every provisioned car per batch, filtering by VIN: ~130 ms a batch at 5,000 cars, half of
PostgreSQL's time per car, and growing with the fleet.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, text

from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, vin
from tests.ota_server.test_ingest_batches import STEPS, signed_batch, step

FLEET = 3000  # unkeyed when analyzed, keyed afterwards: enough for the planner to care


def _key_lookups(statements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (s, p)
        for s, p in statements
        if "vehicles.report_key," in " ".join(s.split()).lower() and "from vehicles" in s.lower()
    ]


async def test_a_batchs_key_lookup_is_by_vin_alone_and_uses_the_vin_index_after_stale_statistics(
    either_env: Env,
) -> None:
    env = either_env
    vins = [vin(n) for n in range(1, 3)]
    cid = (await launched(env.client, vins))["id"]
    nonces = await env.nonces()
    engine = env.runtime.engine
    postgres = engine.dialect.name == "postgresql"
    if postgres:  # statistics taken while the fleet had no keys, then every car provisioned
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO vehicles (vin, model, model_year, production_date, online, created_at) "
                    "SELECT 'ZZZ' || lpad(g::text, 14, '0'), 'm', 2024, DATE '2024-01-01', false, now() "
                    "FROM generate_series(1, :n) g"
                ),
                {"n": FLEET},
            )
            conn.execute(text("UPDATE vehicles SET report_keyid = NULL WHERE vin LIKE 'ZZZ%'"))
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE vehicles"))
        with engine.begin() as conn:
            conn.execute(text("UPDATE vehicles SET report_keyid = md5(vin) WHERE vin LIKE 'ZZZ%'"))
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        await env.inject(*(signed_batch(v, [step(cid, v, nonces[v], s) for s in STEPS]) for v in vins))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    lookups = _key_lookups(statements)
    assert lookups, statements
    for statement, parameters in lookups:
        assert "report_keyid is not null" not in " ".join(statement.split()).lower(), statement
        if postgres:
            with engine.connect() as conn:
                plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            assert "ix_vehicles_report_keyid" not in plan, plan
    # and the keys were found: the cars' batches were accepted
    for v in vins:
        status = (await env.client.get(f"/api/v1/vehicles/{v}/status")).json()
        assert status["campaigns"][0]["state"] == "remedied"


async def test_a_batchs_known_steps_are_read_per_car_on_the_vin_index_and_replays_are_duplicates(
    either_env: Env,
) -> None:
    """The known-steps read per batch (issue 19): ``vin IN (...)`` on ``campaign_events``, a table
    grown from empty with no statistics (the bench's PostgreSQL has no autovacuum), was planned as a
    scan of every event per batch (5 ms a batch at 10,000 cars). On PostgreSQL each VIN is now
    looked up on its own; a replayed batch still finds its steps and counts them as duplicates."""
    env = either_env
    engine = env.runtime.engine
    postgres = engine.dialect.name == "postgresql"
    vins = [vin(n) for n in range(1, 41 if postgres else 4)]  # 40: the bench's batches, where the plan flipped
    cid = (await launched(env.client, vins))["id"]
    nonces = await env.nonces()
    if postgres:  # other cars' events, never analyzed
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO campaign_events (campaign_id, vin, attempt, deferrals, state, received_at) "
                    "SELECT :cid, 'ZZZ' || lpad((g / 6)::text, 14, '0'), 1, 0, 's' || (g % 6), now() "
                    "FROM generate_series(0, :n) g"
                ),
                {"cid": cid, "n": 6 * FLEET - 1},
            )
    batches = [signed_batch(v, [step(cid, v, nonces[v], s) for s in STEPS[:3]]) for v in vins]
    await env.inject(*batches)
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        await env.inject(*batches)  # replayed: every step known
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    stats = (await env.client.get("/api/v1/stats/ingest")).json()
    assert (stats["accepted"], stats["duplicates"]) == (3 * len(vins), 3 * len(vins))
    reads = [(s, p) for s, p in statements if "from campaign_events" in " ".join(s.split()).lower()]
    assert reads, statements
    for statement, parameters in reads:
        if postgres:
            assert "join lateral" in " ".join(statement.split()).lower(), statement
            with engine.connect() as conn:
                plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
            assert "Seq Scan on campaign_events" not in plan, plan
