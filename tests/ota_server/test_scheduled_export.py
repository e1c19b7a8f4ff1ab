"""The scheduled regulator-report export: what is due is written once, whole, by the lease holder only."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ota_server.config import Settings
from ota_server.infra.leases import Lease, LeasedJob
from ota_server.regulator import FORMATS
from ota_server.regulator.scheduled_export import QUARTERLY, REPORT_EXPORT, WEEKLY, ReportExporter, write_atomically
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import FakeClock, launched, vin

VINS = [vin(n) for n in range(1, 4)]
MANUFACTURER = "Example Motors"


def _exporter(env: Env, directory: Path, clock: FakeClock) -> ReportExporter:
    return ReportExporter(env.runtime.sessions, clock, directory, MANUFACTURER)


async def test_a_week_later_every_report_of_the_last_full_week_and_quarter_is_written(
    either_env: Env, tmp_path: Path
) -> None:
    env = either_env  # SQLite and PostgreSQL
    await launched(env.client, VINS)  # launched 2026-03-01 (ISO week 2026-W09, quarter 2026Q1)
    out = tmp_path / "exports"
    clock = FakeClock()
    exporter = _exporter(env, out, clock)
    # Still in the launch's week and quarter: no full period has the recall in it yet.
    assert exporter.run_once() == []
    clock.now = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)  # Thursday of 2026-W14, in 2026Q2
    written = exporter.run_once()
    weekly = {f"24V-123/2026-W13/24V-123_2026-W13_{kind}.{fmt}" for kind in WEEKLY for fmt in FORMATS}
    quarterly = {f"24V-123/2026Q1/24V-123_2026Q1_{kind}.{fmt}" for kind in QUARTERLY for fmt in FORMATS}
    assert {p.relative_to(out).as_posix() for p in written} == weekly | quarterly
    assert not list(out.rglob("*.part"))  # no temporary file left behind
    completion = json.loads((out / "24V-123/2026Q1/24V-123_2026Q1_completion.json").read_text())
    assert (completion["quarter"], completion["period_complete"]) == ("2026Q1", True)
    assert (completion["manufacturer"], completion["submitted_by"]) == (MANUFACTURER, "scheduled export")
    assert completion["submitted_on"] == "2026-04-02"
    feed = (out / "24V-123/2026-W13/24V-123_2026-W13_vin-status.csv").read_text().splitlines()
    assert feed[0].startswith("iso_week,") and len(feed) == 1 + len(VINS)
    assert all(line.startswith("2026-W13,24V-123,") for line in feed[1:])
    assert (out / "24V-123/2026Q1/24V-123_2026Q1_completion.pdf").read_bytes().startswith(b"%PDF")
    # Run again, or on another replica after a hand-over: nothing is due, nothing rewritten.
    assert exporter.run_once() == []
    assert _exporter(env, out, clock).run_once() == []
    # The next week: only that week's files are new.
    clock.now = datetime(2026, 4, 9, 9, 0, tzinfo=UTC)
    assert {p.parent.name for p in exporter.run_once()} == {"2026-W14"}


async def test_a_recall_ended_before_the_period_is_not_exported(either_env: Env, tmp_path: Path) -> None:
    env = either_env
    campaign = await launched(env.client, VINS)
    resp = await env.client.post(f"/api/v1/campaigns/{campaign['id']}/cancel", json={"reason": "superseded"})
    assert resp.status_code == 200, resp.text
    clock = FakeClock()
    clock.now = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    written = _exporter(env, tmp_path, clock).run_once()
    # Cancelled in 2026-W09/2026Q1: its quarter is still reported, the later weeks are not.
    assert written and all("2026Q1" in p.name for p in written)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "r" / "report.csv"
    write_atomically(target, b"old\n")

    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in target.parent.iterdir()] == ["report.csv"]


async def test_only_the_lease_holder_exports(env: Env, tmp_path: Path) -> None:
    await launched(env.client, VINS)
    clock = FakeClock()
    clock.now = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    runs: list[str] = []

    def replica(name: str) -> LeasedJob:
        exporter = _exporter(env, tmp_path / name, clock)

        async def run() -> None:
            runs.append(name)
            exporter.run_once()

        return LeasedJob(Lease(env.runtime.sessions, REPORT_EXPORT, name, clock, ttl_s=15), 3600, run)

    a, b = replica("a"), replica("b")
    for _ in range(3):
        await a.step()
        await b.step()
        await a.idle()
        await b.idle()
        clock.advance(5)
    assert runs == ["a"] and not (tmp_path / "b").exists() and any((tmp_path / "a").rglob("*.pdf"))


async def test_the_server_starts_the_export_job_when_a_directory_is_set(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, report_export_dir=tmp_path / "exports")
    async with running(settings) as env:
        assert any(job.lease.name == REPORT_EXPORT for job in env.runtime.jobs)
    async with running(make_settings(tmp_path / "other")) as env:
        assert not any(job.lease.name == REPORT_EXPORT for job in env.runtime.jobs)


def test_the_export_is_configured_from_the_environment() -> None:
    from ota_server.errors import InvalidInput

    settings = Settings.from_env({"OTA_REPORT_EXPORT_DIR": "/srv/reports", "OTA_REPORT_EXPORT_INTERVAL_S": "900"})
    assert (settings.report_export_dir, settings.report_export_interval_s) == (Path("/srv/reports"), 900.0)
    assert Settings.from_env({}).report_export_dir is None  # off unless a directory is given
    with pytest.raises(InvalidInput, match="REPORT_EXPORT_INTERVAL_S"):
        Settings.from_env({"OTA_REPORT_EXPORT_INTERVAL_S": "0"})
