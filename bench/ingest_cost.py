"""What ingest costs per car on PostgreSQL: six lone signed reports per car, or one report batch.

Sets up a fresh PostgreSQL database through the real server in-process (register ``--cars``
cars, provision their report keys, upload a release, file and launch a recall), then feeds
an :class:`~ota_server.mqtt.ingest.Ingestor` of its own (no broker, no after-batch tick: ingest
alone) every car's six steps, notified to remedied, signed by the car's key beforehand (the
car's work, not the server's):

* ``lone``: six :class:`StatusReport` per car, step by step across the fleet (each car's
  steps arrive apart, as they do in a fleet run, so one ingest batch holds one step of ~500
  cars);
* ``batch``: one :class:`ReportBatch` of the six steps per car.

It prints, per car: this process's CPU (parse, verify, apply, the driver), the CPU of the
PostgreSQL backends serving the ingestor (read from ``/proc``, so PostgreSQL must run on this
machine), SQL statements executed (an executemany counts once) and the rows written (an executemany's
parameter sets count one each).
Each mode gets a fresh database; run the modes back to back, and more than once: the machine
is shared.

    .venv/bin/python -m bench.ingest_cost --cars 1000 --modes lone,batch,lone,batch
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import psycopg
from securesystemslib.signer import CryptoSigner
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from firmware_bundles import topics
from firmware_bundles.bundle import build_bundle, sample_image
from firmware_bundles.messages import (
    CampaignNotice,
    ReportBatch,
    ReportState,
    StatusReport,
    encode,
    parse_campaign_message,
)
from firmware_bundles.report_signing import load_report_signer, sign_report
from firmware_bundles.vin import make_vin
from ota_server.config import Settings
from ota_server.db.session import make_engine, make_session_factory
from ota_server.db.update_rows import rows_sent
from ota_server.http.app import create_app, runtime_of
from ota_server.mqtt.ingest import Ingestor
from ota_server.mqtt.publisher import FakePublisher

HW = "bench-hw"
PG = os.environ.get("OTA_BENCH_PG", "host=127.0.0.1 port=5432 dbname=test user=postgres")
STEPS = (
    ReportState.NOTIFIED,
    ReportState.DOWNLOADING,
    ReportState.VERIFYING,
    ReportState.INSTALLING,
    ReportState.REBOOTING,
    ReportState.REMEDIED,
)
_CHUNK = 500


@dataclass
class Result:
    mode: str
    cars: int
    messages: int
    server_cpu_ms_per_car: float
    postgres_cpu_ms_per_car: float
    statements_per_car: float
    rows_per_car: float
    accepted: int
    remedied: int


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"ota_bench_ingest_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = dict(item.split("=", 1) for item in PG.split())
    try:
        yield f"postgresql+psycopg://{params['user']}@{params['host']}:{params['port']}/{name}"
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def server(data_dir: Path, url: str) -> AsyncIterator[tuple[httpx.AsyncClient, FakePublisher, Any]]:
    settings = Settings(
        data_dir=data_dir, public_url="http://ota.bench", database_url=url, scheduler_interval_s=0
    ).with_overrides(scheduler_report_gap_s=0)
    publisher = FakePublisher()
    app = create_app(settings, publisher=publisher)
    async with app.router.lifespan_context(app):
        headers = {"Authorization": f"Bearer {settings.admin_token_file.read_text().strip()}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ota.bench", headers=headers) as client:
            yield client, publisher, runtime_of(app)


def _ok(resp: httpx.Response) -> Any:
    if resp.status_code >= 300:
        raise SystemExit(f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text[:500]}")
    return resp.json()


async def launch(data_dir: Path, url: str, vins: list[str]) -> tuple[int, dict[str, str], dict[str, CryptoSigner]]:
    """The campaign id, each car's nonce and report key."""
    keys: dict[str, CryptoSigner] = {}
    async with server(data_dir, url) as (client, publisher, runtime):
        for start in range(0, len(vins), _CHUNK):
            chunk = vins[start : start + _CHUNK]
            cars = [
                {
                    "vin": v,
                    "make": "Acme",
                    "model": "Sedan",
                    "model_year": 2022,
                    "production_date": "2022-05-01",
                    "ecus": [
                        {"serial": f"S-{v[-6:]}", "hardware_id": HW, "installed_version": "1.0.0", "primary": True}
                    ],
                }
                for v in chunk
            ]
            _ok(await client.post("/api/v1/vehicles/batch", json={"vehicles": cars}))
            body = _ok(
                await client.post("/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": chunk})
            )
            for identity in body["identities"]:
                keys[identity["vin"]] = load_report_signer(identity["report_private_key"].encode())
        bundle = build_bundle(sample_image(HW, "1.1.0", size=4096), HW, "1.1.0", 2).data
        release = _ok(
            await client.post(
                "/api/v1/releases",
                files={"file": ("fix.otab", bundle, "application/octet-stream")},
                data={"hardware_id": HW, "version": "1.1.0", "release_counter": "2"},
            )
        )
        recall = _ok(
            await client.post(
                "/api/v1/recalls",
                json={
                    "campaign_number": "24V-900",
                    "title": "Ingest bench",
                    "defect": "none",
                    "safety_risk": "none",
                    "remedy": "update",
                    "release_id": release["id"],
                    "population": {},
                    "safety_recall": False,
                    "requires_consent": False,
                    "owner_notice": {
                        "purpose": "bench",
                        "what_changes": "bench",
                        "expected_minutes": 20,
                        "unavailable_functions": ["driving"],
                        "contact": {"name": "Bench", "role": "Bench", "phone": "+1 555 0100", "email": "b@example.com"},
                    },
                },
            )
        )
        campaign = _ok(await client.post(f"/api/v1/recalls/{recall['id']}/launch"))
        await runtime.coordinator.idle()
        await runtime.dispatcher.idle()
        notices = (parse_campaign_message(m.payload) for m in publisher.messages)
        nonces = {n.vin: n.nonce for n in notices if isinstance(n, CampaignNotice)}
    missing = set(vins) - set(nonces)
    if missing:
        raise SystemExit(f"{len(missing)} cars got no notice")
    return int(campaign["id"]), nonces, keys


def payloads(mode: str, cid: int, nonces: dict[str, str], keys: dict[str, CryptoSigner]) -> list[tuple[str, bytes]]:
    sent_at = datetime.now(UTC)

    def step(v: str, state: ReportState) -> StatusReport:
        evidence: dict[str, Any] = {"installed_version": "1.1.0", "health_ok": True} if state is STEPS[-1] else {}
        return StatusReport(campaign_id=cid, vin=v, nonce=nonces[v], state=state, sent_at=sent_at, **evidence)

    if mode == "lone":
        return [(topics.status_topic(v), encode(sign_report(step(v, s), keys[v]))) for s in STEPS for v in nonces]
    return [
        (
            topics.status_topic(v),
            encode(sign_report(ReportBatch(vin=v, reports=tuple(step(v, s) for s in STEPS), sent_at=sent_at), keys[v])),
        )
        for v in nonces
    ]


def _backend_cpu_s(pids: set[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def measure(mode: str, cars: int) -> Result:
    vins = [make_vin("1HG", "CM826", "N", "A", n) for n in range(1, cars + 1)]
    with TemporaryDirectory() as tmp, fresh_database() as url:
        cid, nonces, keys = await launch(Path(tmp), url, vins)
        messages = payloads(mode, cid, nonces, keys)
        engine: Engine = make_engine(url)
        pids: set[int] = set()
        statements = rows = 0

        def connected(dbapi_conn: Any, _record: Any) -> None:
            with dbapi_conn.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids.add(int(cur.fetchone()[0]))

        def executed(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
            nonlocal statements, rows
            statements += 1
            if not sql.lstrip().upper().startswith("SELECT"):  # rows written
                rows += rows_sent(sql, params, many)

        event.listen(engine, "connect", connected)
        ingestor = Ingestor(make_session_factory(engine), lambda: datetime.now(UTC), vin_rate_per_s=5.0)
        with engine.connect():  # open one backend before the clock starts
            pass
        before_pg = _backend_cpu_s(pids)
        event.listen(engine, "before_cursor_execute", executed)
        before = time.process_time()
        ingestor.start()
        for topic, payload in messages:
            if not ingestor.submit(topic, payload):
                raise SystemExit(f"refused at the edge: {ingestor.stats()}")
        await ingestor.flush()
        server_s = time.process_time() - before
        pg_s = _backend_cpu_s(pids) - before_pg
        event.remove(engine, "before_cursor_execute", executed)
        await ingestor.stop()
        with engine.connect() as conn:
            remedied = conn.scalar(text("SELECT count(*) FROM campaign_vehicles WHERE state = 'remedied'"))
        engine.dispose()
        stats = ingestor.stats()
        return Result(
            mode=mode,
            cars=cars,
            messages=len(messages),
            server_cpu_ms_per_car=round(server_s * 1000 / cars, 3),
            postgres_cpu_ms_per_car=round(pg_s * 1000 / cars, 3),
            statements_per_car=round(statements / cars, 3),
            rows_per_car=round(rows / cars, 3),
            accepted=stats.accepted,
            remedied=int(remedied or 0),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=int, default=1000)
    parser.add_argument("--modes", default="lone,batch", help="comma-separated: lone, batch (run in this order)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # development keys and tokens: said once per database
    results = []
    for mode in args.modes.split(","):
        if mode not in ("lone", "batch"):
            raise SystemExit(f"unknown mode {mode!r}")
        result = asyncio.run(measure(mode, args.cars))
        results.append(asdict(result))
        print(json.dumps(asdict(result)), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
