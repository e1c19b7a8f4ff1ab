"""Reports from a small campaign: OTA remedy, dealer remedy, inspection, unreachable, one still open."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_bundles.vin import vin_order
from ota_server.cli import common as cli_common
from ota_server.config import Settings
from ota_server.regulator import FORMATS, KINDS
from ota_server.regulator.wording import STATUSES
from tests.ota_server.conftest import Env, running
from tests.ota_server.helpers import launched, remedied, vin
from tests.ota_server.test_cli_ops import LoopTransport, ota

QUARTER = "2026Q1"  # the FakeClock starts on 2026-03-01
VINS = [vin(n) for n in range(1, 6)]


async def _campaign(env: Env) -> tuple[int, int]:
    """Five cars: OTA remedy, dealer remedy, stolen, inspected, one still open; (recall id, campaign id)."""
    campaign = await launched(env.client, VINS, installed_versions={"min": "1.0.0", "max": "1.0.9"})
    cid = campaign["id"]
    nonces = await env.nonces()
    await env.inject(remedied(cid, VINS[0], nonces[VINS[0]]))
    url = f"/api/v1/campaigns/{cid}/vehicles/{{}}/outcome"
    for car, body in (
        (VINS[1], {"outcome": "remedied_at_dealer", "evidence": "RO 4711", "reference": "RO-4711"}),
        (VINS[2], {"outcome": "unreachable", "reason": "stolen", "evidence": "Police report 99"}),
        (VINS[3], {"outcome": "inspected_not_needed", "evidence": "Revised controller fitted"}),
    ):
        resp = await env.client.post(url.format(car), json=body)
        assert resp.status_code == 200, resp.text
    return campaign["recall_id"], cid


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def _get(env: Env, recall_id: int, kind: str, fmt: str = "json", **params: str) -> Any:
    resp = await env.client.get(f"/api/v1/reports/recalls/{recall_id}/{kind}", params={"format": fmt, **params})
    assert resp.status_code == 200, resp.text
    return resp.json() if fmt == "json" else resp


async def test_population_report_counts_the_campaign(env: Env) -> None:
    recall_id, cid = await _campaign(env)
    body = await _get(env, recall_id, "population")
    assert body["kind"] == "population" and body["recall_number"] == "24V-123" and body["campaign_id"] == cid
    assert body["summary"]["total"] == len(VINS) == sum(row["count"] for row in body["rows"])
    assert body["rows"] == [
        {
            "make": "Acme",
            "model": "Sedan",
            "model_year": 2022,
            "vin_first": min(VINS, key=vin_order),
            "vin_last": max(VINS, key=vin_order),
            "production_date_first": "2022-05-01",
            "production_date_last": "2022-05-01",
            "count": 5,
        }
    ]
    assert body["summary"]["criteria"]["installed_versions"] == {"min": "1.0.0", "max": "1.0.9"}
    rows = _csv((await _get(env, recall_id, "population", "csv")).text)
    assert (
        ",".join(rows[0]) == "make,model,model_year,vin_first,vin_last,production_date_first,production_date_last,count"
    )
    assert rows[0]["count"] == "5"


async def test_population_report_gives_the_first_and_last_vin_in_vin_order(env: Env) -> None:
    """The check digit is not part of the order: 204 to 206, though 206 (check digit 1) is first as text."""
    cars = [vin(n) for n in (204, 205, 206)]
    campaign = await launched(env.client, cars)
    body = await _get(env, campaign["recall_id"], "population")
    assert [(r["vin_first"], r["vin_last"]) for r in body["rows"]] == [(vin(204), vin(206))]
    assert body["summary"]["vin_range"] == {"first": vin(204), "last": vin(206)}


async def test_completion_report_adds_up_in_json_csv_and_pdf(env: Env) -> None:
    recall_id, _ = await _campaign(env)
    body = await _get(env, recall_id, "completion", quarter=QUARTER)
    summary = body["summary"]
    assert body["quarter"] == QUARTER
    assert summary["involved"] == 5
    assert (summary["remedied_ota"], summary["remedied_at_dealer"], summary["inspected_not_needed"]) == (1, 1, 1)
    assert summary["unreachable"] == 1 and summary["unreachable_by_reason"]["stolen"] == 1
    assert summary["open"] == 1
    buckets = ("remedied_ota", "remedied_at_dealer", "inspected_not_needed", "unreachable", "failed", "declined")
    assert sum(summary[k] for k in (*buckets, "withdrawn", "open")) == summary["involved"]
    assert summary["remedied_in_quarter"] == {"remedied_ota": 1, "remedied_at_dealer": 1, "inspected_not_needed": 1}
    # The previous quarter, before the launch: every car still open, nothing remedied.
    before = (await _get(env, recall_id, "completion", quarter="2025Q4"))["summary"]
    assert before["involved"] == before["open"] == 5 and before["remedied_ota"] == 0
    table = _csv((await _get(env, recall_id, "completion", "csv")).text)
    assert list(table[0]) == ["measure", "cumulative", "in_quarter"]
    rows = {row["measure"]: int(row["cumulative"]) for row in table}
    assert rows["involved"] == 5 and rows["unreachable_stolen"] == 1 and rows["remedied_at_dealer"] == 1
    pdf = await _get(env, recall_id, "completion", "pdf", quarter=QUARTER)
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF") and b"24V-123" in pdf.content


async def test_vin_status_feed_has_one_row_per_car(env: Env) -> None:
    recall_id, _ = await _campaign(env)
    resp = await _get(env, recall_id, "vin-status", "csv", week="2026-W09")
    assert resp.headers["content-type"].startswith("text/csv")
    header = resp.text.splitlines()[0]
    assert header == (
        "iso_week,recall_number,manufacturer_recall_number,vin,status,reason,status_date,installed_versions,reported_at"
    )
    rows = {row["vin"]: row for row in _csv(resp.text)}
    assert set(rows) == set(VINS)
    assert (rows[VINS[0]]["status"], rows[VINS[0]]["reason"]) == ("remedied", "over the air")
    assert rows[VINS[0]]["status_date"] == "2026-03-01"
    assert (rows[VINS[1]]["status"], rows[VINS[1]]["reason"]) == ("remedied", "at a dealer")
    assert (rows[VINS[2]]["status"], rows[VINS[2]]["reason"]) == ("unreachable", "stolen")
    assert (rows[VINS[3]]["status"], rows[VINS[3]]["reason"]) == ("removed", "inspected: remedy not needed")
    assert rows[VINS[4]]["status"] == "not remedied"
    assert all(row["recall_number"] == "24V-123" and row["iso_week"] == "2026-W09" for row in rows.values())
    # The regulator's words only: no internal state name anywhere in the feed.
    assert {row["status"] for row in rows.values()} <= set(STATUSES)


async def test_notice_log_lists_every_notice(env: Env) -> None:
    recall_id, cid = await _campaign(env)
    body = await _get(env, recall_id, "notices")
    assert body["summary"]["vehicles_notified"] == 5
    assert {row["vin"] for row in body["rows"]} == set(VINS)
    assert all(row["campaign_id"] == cid for row in body["rows"])
    kinds = sorted((row["vin"], row["notice_kind"]) for row in body["rows"])
    # each car its notice; the three an operator recorded (dealer, stolen, inspected) their withdrawal too
    assert kinds == sorted([(v, "campaign") for v in VINS] + [(v, "withdrawal") for v in VINS[1:4]])
    rows = _csv((await _get(env, recall_id, "notices", "csv")).text)
    assert len(rows) == len(body["rows"]) and rows[0]["nonce"]


async def test_type_approval_record_checks_each_car(env: Env) -> None:
    recall_id, _ = await _campaign(env)
    body = await _get(env, recall_id, "type-approval")
    update = body["update"]
    assert update["affected_systems"] == ["ecu-main"] and update["rxswin"] == []
    assert len(update["release"]["bundle_sha256"]) == 64 and len(update["release"]["image_sha256"]) == 64
    assert update["purpose"]["title"] == "Brake assist software"
    rows = {row["vin"]: row for row in body["rows"]}
    assert set(rows) == set(VINS) and body["summary"]["target_vins"] == 5
    assert all(row["compatible"] for row in rows.values())
    assert rows[VINS[4]]["check"] == "compatible" and rows[VINS[4]]["installed_version"] == "1.0.0"
    csv_rows = _csv((await _get(env, recall_id, "type-approval", "csv")).text)
    assert (
        csv_rows[0]["rxswin"] == "none declared" and csv_rows[0]["bundle_sha256"] == update["release"]["bundle_sha256"]
    )


async def test_reports_need_a_token_and_known_inputs(env: Env) -> None:
    recall_id, _ = await _campaign(env)
    viewer = await env.headers_for("regulator-desk", "viewer")
    ok = await env.client.get(f"/api/v1/reports/recalls/{recall_id}/population", headers=viewer)
    assert ok.status_code == 200
    index = await env.client.get("/api/v1/reports", headers=viewer)
    assert index.json()["audit_export"] == "/api/v1/audit/export"
    # every URL in the index is one a client can follow as it is (no templates to fill in)
    links = index.json()["recalls"][0]["reports"]
    assert set(links) == set(KINDS)
    for url in links.values():
        assert "{" not in url
        assert (await env.client.get(url, headers=viewer)).status_code == 200
    anonymous = await env.client.get(f"/api/v1/reports/recalls/{recall_id}/population", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert (await env.client.get(f"/api/v1/reports/recalls/{recall_id}/nope")).status_code == 422
    assert (await env.client.get(f"/api/v1/reports/recalls/{recall_id}/notices?format=xml")).status_code == 422
    bad_quarter = await env.client.get(f"/api/v1/reports/recalls/{recall_id}/completion?quarter=2026Q5")
    assert bad_quarter.status_code == 422
    assert (await env.client.get("/api/v1/reports/recalls/999/population")).status_code == 404


async def test_cli_exports_a_report_to_a_file(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings) as env:
        transport = LoopTransport(httpx.ASGITransport(app=env.app), asyncio.get_running_loop())
        monkeypatch.setattr(cli_common, "transport_override", transport)
        recall_id, _ = await _campaign(env)
        out = tmp_path / "completion.json"
        args = ["reports", "export", str(recall_id), "--kind", "completion", "--quarter", QUARTER]
        result = await ota(env, *args, "--format", "json", "--out", str(out))
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["summary"]["involved"] == 5
        pdf = tmp_path / "completion.pdf"
        result = await ota(env, *args, "--format", "pdf", "--out", str(pdf))
        assert result.exit_code == 0, result.output
        assert pdf.read_bytes().startswith(b"%PDF")
        bad = await ota(env, "reports", "export", "999", "--kind", "population", "--out", str(pdf))
        assert bad.exit_code == 1 and "no recall 999" in bad.output


def pdf_text(pdf: bytes) -> str:
    """The text drawn on a PDF's pages (fpdf2 compresses each page's content stream)."""
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.DOTALL)
    return b"".join(zlib.decompress(stream) for stream in streams if stream[:1] == b"x").decode("latin-1")


async def test_every_kind_is_available_as_pdf_csv_and_json(env: Env) -> None:
    recall_id, _ = await _campaign(env)
    index = (await env.client.get("/api/v1/reports")).json()
    assert index["formats"] == list(FORMATS) and index["pdf"] == list(KINDS)
    for kind in KINDS:
        params = {"quarter": QUARTER} if kind == "completion" else {}
        body = await _get(env, recall_id, kind, "json", **params)
        assert body["kind"] == kind and isinstance(body["rows"], list) and body["rows"], kind
        for key in ("manufacturer", "recall_number", "manufacturer_number", "submitted_by", "submitted_on"):
            assert key in body, (kind, key)
        table = await _get(env, recall_id, kind, "csv", **params)
        header = next(csv.reader(io.StringIO(table.text)))
        assert header and set(header) <= set(body["rows"][0]), kind  # every CSV column is a JSON row key
        assert len(_csv(table.text)) == len(body["rows"]), kind
        pdf = await _get(env, recall_id, kind, "pdf", **params)
        assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
        assert f"{kind}.pdf" in pdf.headers["content-disposition"]
        text = pdf_text(pdf.content)
        assert "24V-123" in text, kind
        if kind in ("vin-status", "type-approval"):  # a row per car, in the PDF too
            assert all(car in text for car in VINS), kind


def test_compatibility_check_against_the_last_known_configuration() -> None:
    from ota_server.regulator.type_approval import check

    assert check("1.0.0", "1.1.0", "1.0.0", "1.0.9") == "compatible"
    assert check("1.1.0", "1.1.0", "1.0.0", "1.0.9") == "already_updated"
    assert check("0.9", "1.1.0", "1.0.0", None) == "version_out_of_range"
    assert check("1.0.10", "1.1.0", None, "1.0.9") == "version_out_of_range"
    assert check(None, "1.1.0", None, None) == "no_matching_ecu"
    assert check("banana", "1.1.0", None, None) == "unknown_version"


def test_every_internal_state_has_regulator_wording() -> None:
    from ota_server.domain.states import VinState
    from ota_server.regulator.wording import regulator_wording

    for state in VinState:
        wording = regulator_wording(state.value, None)
        assert wording.status in STATUSES and wording.reason, state
        assert wording.reason not in {s.value for s in VinState}, state  # e.g. never "rolled_back"
    assert regulator_wording("unreachable", "exported").reason == "exported"
    assert regulator_wording("unreachable", "moon").reason == "other"


async def test_completion_report_carries_what_the_regulator_asks_for(env: Env) -> None:
    recall_id, _ = await _campaign(env)
    with env.runtime.sessions() as session:
        from ota_server.db.models import Recall

        recall = session.get(Recall, recall_id)
        assert recall is not None
        recall.manufacturer_number = "EM-2026-007"
        session.commit()
    analyst = await env.headers_for("rita.regulatory", "viewer")
    resp = await env.client.get(
        f"/api/v1/reports/recalls/{recall_id}/completion", params={"quarter": QUARTER}, headers=analyst
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["manufacturer"] == env.runtime.settings.manufacturer_name
    assert (body["recall_number"], body["manufacturer_number"]) == ("24V-123", "EM-2026-007")
    assert body["submitted_by"] == "rita.regulatory" and body["submitted_on"] == env.clock.now.date().isoformat()
    assert (body["period_start"][:10], body["period_end"][:10]) == ("2026-01-01", "2026-04-01")
    assert body["period_complete"] is False  # 2026Q1 asked on 2026-03-01: to date
    # Every car was sent its notice at the launch (2026-03-01): notification began and completed then.
    assert body["owner_notification_began"] == body["owner_notification_completed"] == "2026-03-01"
    summary = body["summary"]
    assert (
        summary["owners_notified"] == summary["owners_notified_in_quarter"] == 5 and summary["owners_not_notified"] == 0
    )
    removed = summary["removed_from_population"]
    assert removed["total"] == 1 and removed["by_reason"]["inspected: remedy not needed"] == 1
    assert removed["by_reason"]["recall withdrawn before the update started"] == 0
    assert summary["unreachable_in_quarter"] == 1 and summary["removed_in_quarter"] == 1
    table = {row["measure"]: row for row in body["rows"]}
    assert table["remedied_ota"] == {"measure": "remedied_ota", "cumulative": 1, "in_quarter": 1}
    assert table["owners_notified"]["cumulative"] == 5
    # The next quarter: the same cars, cumulative, but nothing happened in it.
    later = await _get(env, recall_id, "completion", quarter="2026Q2")
    later_table = {row["measure"]: row for row in later["rows"]}
    assert later_table["remedied_ota"] == {"measure": "remedied_ota", "cumulative": 1, "in_quarter": 0}
    assert later["summary"]["owners_notified"] == 5 and later["summary"]["owners_notified_in_quarter"] == 0
    # Before the launch nobody was told.
    before = await _get(env, recall_id, "completion", quarter="2025Q4")
    assert before["owner_notification_began"] is None and before["summary"]["owners_notified"] == 0
    assert before["summary"]["owners_not_notified"] == 5
    pdf = await env.client.get(
        f"/api/v1/reports/recalls/{recall_id}/completion",
        params={"quarter": QUARTER, "format": "pdf"},
        headers=analyst,
    )
    text = pdf_text(pdf.content)
    for fact in (env.runtime.settings.manufacturer_name, "EM-2026-007", "rita.regulatory", "Owners notified"):
        assert fact in text, fact
    assert "Removed from the population: inspected: remedy not needed" in text
    assert "2026-01-01 to 2026-03-31" in text  # the quarter's last day, not the exclusive end


async def test_every_report_names_the_manufacturer_and_submitter(env: Env) -> None:
    recall_id, _ = await _campaign(env)
    for kind in KINDS:
        body = await _get(env, recall_id, kind)
        assert body["manufacturer"] == env.runtime.settings.manufacturer_name, kind
        assert body["submitted_by"] and body["recall_number"] == "24V-123", kind
