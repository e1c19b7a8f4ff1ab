"""One vocabulary (issue 18): waves numbered from 1 everywhere, a scheduled campaign says when it
starts, recalls are launched by RECALL_ID and campaigns acted on by CAMPAIGN_ID, and the CLI's
`vehicles show` (timeline), `campaigns outcome` and `tokens list|revoke --json`."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest import MonkeyPatch

from firmware_bundles.messages import FailureReason, ReportState
from ota_server.domain.waves import wave_index, wave_number
from tests.ota_server import test_cli_ops
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import provision, recall_body, report, upload, vehicle, vin
from tests.ota_server.test_cli_ops import build_and_upload, ota, recall_from_yaml, token_for, write_csv
from tests.ota_server.test_inventory import manifest

wired = test_cli_ops.wired  # the CLI against the in-process server

# "wave 0", "Wave: 0", JSON "wave": 0 or "current_wave": 0: what waves from 1 rule out.
WAVE_ZERO = re.compile(r'(\bwaves?|current_wave)"?\s*:?\s*0\b', re.IGNORECASE)
TWO_WAVES = {"waves": [{"cars": 2}, {"percent": 100}], "success_threshold_percent": 100, "error_threshold_count": 1}


def test_the_stored_index_and_the_shown_number_convert_both_ways() -> None:
    assert [wave_number(i) for i in range(3)] == [1, 2, 3]
    said = ["wave 0 tripped", "Wave: 0", '{"wave": 0}', '{"current_wave":0}', "waves 0 to 2"]
    assert all(WAVE_ZERO.search(text) for text in said)  # the sweep below would see each
    assert not any(WAVE_ZERO.search(t) for t in ["wave 1", '"wave": 10', '"current_wave": 2', '"waves": []'])
    assert all(wave_index(wave_number(i)) == i for i in range(5))


async def _get(env: Env, url: str) -> Any:
    return await env.get_json(url)


async def _fleet(env: Env, count: int) -> tuple[list[str], int]:
    vins = [vin(i) for i in range(1, count + 1)]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in vins]})
    assert resp.status_code == 201, resp.text
    await provision(env.client, vins)
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    return vins, int(release.json()["id"])


async def _recall(env: Env, release_id: int, rollout: dict[str, Any]) -> int:
    resp = await env.client.post("/api/v1/recalls", json={**recall_body(release_id), "rollout": rollout})
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


async def _everything_shown(env: Env, campaign_id: int, vins: list[str]) -> list[str]:
    """Every API answer, page JSON and CLI output about the campaign and its cars, as text."""
    texts = [
        (await env.client.get(url)).text
        for url in (
            f"/api/v1/campaigns/{campaign_id}",
            f"/api/v1/campaigns/{campaign_id}/progress",
            f"/api/v1/campaigns/{campaign_id}/dashboard",
            f"/api/v1/campaigns/{campaign_id}/vehicles",
            "/api/v1/dashboard/campaigns",
            *(f"/api/v1/vehicles/{v}/timeline" for v in vins),
        )
    ]
    commands = [
        ("campaigns", "show", str(campaign_id)),
        ("campaigns", "list"),
        ("campaigns", "watch", str(campaign_id), "--once"),
        ("campaigns", "vehicles", str(campaign_id)),
        *(("vehicles", "show", v) for v in vins),
    ]
    for command in commands:
        result = await ota(env, *command)
        assert result.exit_code == 0, result.output
        texts.append(result.stdout)
    return texts


async def test_waves_are_numbered_from_1_in_the_api_pages_texts_and_cli(wired: Env) -> None:
    env = wired
    vins, release_id = await _fleet(env, 4)
    recall_id = await _recall(env, release_id, TWO_WAVES)
    launched = await ota(env, "recalls", "launch", str(recall_id), "--json")
    assert launched.exit_code == 0, launched.output
    campaign = json.loads(launched.stdout)
    cid = campaign["id"]
    assert campaign["current_wave"] == 1

    progress = await _get(env, f"/api/v1/campaigns/{cid}/progress")
    assert progress["current_wave"] == 1
    assert [(w["number"], w["size"], w["opened"]) for w in progress["waves"]] == [(1, 2, True), (2, 2, False)]
    dashboard = await _get(env, f"/api/v1/campaigns/{cid}/dashboard")
    assert dashboard["current_wave"] == 1
    assert [(w["number"], w["spec"]) for w in dashboard["waves"]] == [(1, "2 cars"), (2, "100%")]
    rows = (await _get(env, f"/api/v1/campaigns/{cid}/vehicles"))["items"]
    by_wave = {n: sorted(r["vin"] for r in rows if r["wave"] == n) for n in (1, 2)}
    assert sorted(by_wave[1] + by_wave[2]) == sorted(vins) and len(by_wave[1]) == 2
    later = by_wave[2][0]
    timeline = await _get(env, f"/api/v1/vehicles/{later}/timeline")
    [of_vin] = timeline["campaigns"]
    assert of_vin["wave"] == 2
    assert of_vin["next_step"].startswith("Waiting for wave 2 to open (wave 1 is rolling out)")

    first = by_wave[1][0]  # one failure trips wave 1's gate (error_threshold_count 1)
    nonces = await env.nonces()
    await env.inject(report(cid, first, nonces[first], ReportState.FAILED, reason=FailureReason.DOWNLOAD_FAILED))
    paused = await _get(env, f"/api/v1/campaigns/{cid}")
    assert paused["status"] == "paused"
    assert str(paused["status_reason"]).startswith("error threshold crossed in wave 1:")

    shown = await _everything_shown(env, cid, vins)
    assert not [text for text in shown if WAVE_ZERO.search(text)]
    watched = await ota(env, "campaigns", "watch", str(cid), "--once")
    assert "the download failed (download_failed): 1" in watched.stdout  # the code in plain words, code beside


async def test_a_scheduled_campaign_says_when_it_starts_until_it_does(wired: Env, monkeypatch: MonkeyPatch) -> None:
    env = wired
    monkeypatch.setenv("COLUMNS", "160")  # the list's table on one line per campaign
    vins, release_id = await _fleet(env, 2)
    recall_id = await _recall(env, release_id, {"start_at": "2026-03-02T00:00:00Z"})  # the clock: 03-01 12:00
    campaign = json.loads((await ota(env, "recalls", "launch", str(recall_id), "--json")).stdout)
    cid = campaign["id"]
    start = datetime.fromisoformat("2026-03-02T00:00:00+00:00")
    assert campaign["scheduled"] is True and datetime.fromisoformat(campaign["starts_at"]) == start

    progress = await _get(env, f"/api/v1/campaigns/{cid}/progress")
    assert progress["scheduled"] is True and progress["done"] is False
    dashboard = await _get(env, f"/api/v1/campaigns/{cid}/dashboard")
    assert dashboard["scheduled"] is True and dashboard["in_progress"] == 0
    assert datetime.fromisoformat(str(dashboard["starts_at"])) == start
    [summary] = (await env.client.get("/api/v1/dashboard/campaigns")).json()
    assert summary["scheduled"] is True and datetime.fromisoformat(summary["starts_at"]) == start
    timeline = await _get(env, f"/api/v1/vehicles/{vins[0]}/timeline")
    assert "start at 2026-03-02 00:00 UTC" in str(timeline["next_step"])

    says = "scheduled: starts at 2026-03-02 00:00 UTC"
    listed = await ota(env, "campaigns", "list")  # a table: the start in its own column
    assert listed.exit_code == 0, listed.output
    assert re.search(r"│ scheduled\s+│ 2\s+│ 1\s+│ 2026-03-02 00:00 UTC │", listed.stdout), listed.stdout
    shown = await ota(env, "campaigns", "show", str(cid))
    assert says in shown.stdout and "not started, starts at 2026-03-02 00:00 UTC" in shown.stdout, shown.output
    assert "in progress" not in shown.stdout
    watched = await ota(env, "campaigns", "watch", str(cid), "--once")
    assert "not started, starts at 2026-03-02 00:00 UTC" in watched.stdout
    # One word for it everywhere: the list's "scheduled", not "active" in show and watch (outside test, issue 18).
    for said in (shown.stdout, watched.stdout):
        assert "scheduled" in said and "active" not in said, said

    env.clock.advance(12 * 3600)
    await env.tick()
    started = await _get(env, f"/api/v1/campaigns/{cid}")
    assert started["scheduled"] is False and started["status"] == "active"
    assert datetime.fromisoformat(str(started["starts_at"])) == start  # still said: when it started
    assert (await _get(env, f"/api/v1/campaigns/{cid}/progress"))["scheduled"] is False
    assert len(await env.nonces()) == 2
    listed = await ota(env, "campaigns", "list")
    assert "scheduled" not in listed.stdout and "active" in listed.stdout


async def test_a_car_in_a_later_wave_of_a_scheduled_campaign_is_told_the_start(wired: Env) -> None:
    """Outside test (issue 18): wave 2's car said "waiting for wave 2 to open" and no start time."""
    vins, release_id = await _fleet(wired, 3)
    recall_id = await _recall(wired, release_id, TWO_WAVES | {"start_at": "2026-03-02T00:00:00Z"})
    campaign = json.loads((await ota(wired, "recalls", "launch", str(recall_id), "--json")).stdout)
    assert campaign["scheduled"] is True
    steps = [str((await _get(wired, f"/api/v1/vehicles/{v}/timeline"))["next_step"]) for v in vins]
    assert all("start at 2026-03-02 00:00 UTC" in step for step in steps), steps
    assert sum("wave 2" in step for step in steps) == 1, steps  # the third car: wave 2 opens after the start


async def test_a_campaign_without_a_start_is_not_scheduled(wired: Env) -> None:
    _, release_id = await _fleet(wired, 1)
    recall_id = await _recall(wired, release_id, {})
    campaign = json.loads((await ota(wired, "recalls", "launch", str(recall_id), "--json")).stdout)
    assert campaign["scheduled"] is False and campaign["starts_at"] is None
    line = await ota(wired, "campaigns", "show", str(campaign["id"]))
    assert "scheduled" not in line.stdout and "starts at" not in line.stdout


async def _safety_recall(env: Env, tmp_path: Path) -> tuple[int, str, str]:
    """Two cars, a safety recall filed from YAML; its id and an operator's and an approver's token."""
    vins = [vin(i) for i in range(1, 3)]
    assert (await ota(env, "vehicles", "import", str(write_csv(tmp_path / "cars.csv", vins)))).exit_code == 0
    release_id = await build_and_upload(env, tmp_path)
    recall_id = await recall_from_yaml(env, tmp_path, release_id, safety=True)
    return recall_id, await token_for(env, "olga", "operator"), await token_for(env, "bob", "approver")


async def test_recalls_are_launched_and_approved_by_recall_id(wired: Env, tmp_path: Path) -> None:
    recall_id, operator, approver = await _safety_recall(wired, tmp_path)
    requested = await ota(wired, "recalls", "launch", str(recall_id), token=operator)
    assert requested.exit_code == 0 and "awaiting approval" in requested.stdout, requested.output
    approved = await ota(wired, "recalls", "approve", str(recall_id), token=approver)
    assert approved.exit_code == 0, approved.output
    assert re.search(
        rf"approved and launched campaign \d+ of recall {recall_id}: active, 2 cars, wave 1", approved.stdout
    )
    assert not approved.stderr


async def test_the_old_spellings_still_work_hidden_and_say_they_are_deprecated(wired: Env, tmp_path: Path) -> None:
    recall_id, operator, approver = await _safety_recall(wired, tmp_path)
    requested = await ota(wired, "campaigns", "launch", str(recall_id), token=operator)
    assert requested.exit_code == 0 and "awaiting approval" in requested.stdout, requested.output
    assert "deprecated" in requested.stderr and "ota recalls launch RECALL_ID" in requested.stderr
    approved = await ota(wired, "campaigns", "approve", str(recall_id), "--json", token=approver)
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout)["recall_id"] == recall_id  # stdout stays clean JSON
    assert "ota recalls approve RECALL_ID" in approved.stderr

    campaigns_help = await ota(wired, "campaigns", "--help")
    said = " ".join(campaigns_help.stdout.split())
    assert "by CAMPAIGN_ID" in said and "`ota recalls launch|approve RECALL_ID`" in said
    assert not re.search(r"^\W*(launch|approve)\s", campaigns_help.stdout, re.MULTILINE)  # not listed as commands
    recalls_help = await ota(wired, "recalls", "--help")
    assert re.search(r"^\W*launch\s", recalls_help.stdout, re.MULTILINE)
    assert re.search(r"^\W*approve\s", recalls_help.stdout, re.MULTILINE)
    assert "RECALL_ID" in (await ota(wired, "recalls", "launch", "--help")).stdout
    assert "CAMPAIGN_ID" in (await ota(wired, "campaigns", "pause", "--help")).stdout


async def test_outcome_records_a_dealer_fix_and_an_unreachable_car(wired: Env) -> None:
    vins, release_id = await _fleet(wired, 2)
    recall_id = await _recall(wired, release_id, {})
    cid = str(json.loads((await ota(wired, "recalls", "launch", str(recall_id), "--json")).stdout)["id"])
    dealer = await ota(
        wired, "campaigns", "outcome", cid, vins[0], "--outcome", "remedied_at_dealer", "--evidence", "repair order",
        "--reference", "RO-1", "--json",
    )  # fmt: skip
    assert dealer.exit_code == 0, dealer.output
    record = json.loads(dealer.stdout)
    assert (record["state"], record["recorded_by"]) == ("remedied_at_dealer", "admin")
    stolen = await ota(
        wired, "campaigns", "outcome", cid, vins[1], "--outcome", "unreachable", "--reason", "stolen",
        "--evidence", "police report",
    )  # fmt: skip
    assert stolen.exit_code == 0, stolen.output
    # Outside test (issue 18): it said "unreachable (unreachable: stolen (stolen))".
    assert f"campaign {cid}, {vins[1]}: unreachable: the car was stolen (stolen), recorded by admin" in stolen.stdout
    rows = (await _get(wired, f"/api/v1/campaigns/{cid}/vehicles"))["items"]
    assert {r["vin"]: r["state"] for r in rows} == {vins[0]: "remedied_at_dealer", vins[1]: "unreachable"}
    again = await ota(
        wired, "campaigns", "outcome", cid, vins[0], "--outcome", "inspected_not_needed", "--evidence", "x"
    )
    assert again.exit_code == 1 and "409" in again.stderr
    missing = await ota(wired, "campaigns", "outcome", cid, vins[0], "--outcome", "unreachable")
    assert missing.exit_code == 2 and "--evidence" in missing.output
    wrong = await ota(wired, "campaigns", "outcome", cid, vins[0], "--outcome", "fixed", "--evidence", "x")
    assert wrong.exit_code == 2


async def test_a_status_reason_does_not_repeat_the_status(wired: Env, monkeypatch: MonkeyPatch) -> None:
    """Outside test (issue 18): "paused (paused by admin: why)" said the status twice."""
    monkeypatch.setenv("COLUMNS", "200")  # watch's header on one line
    _, release_id = await _fleet(wired, 1)
    recall_id = await _recall(wired, release_id, {})
    cid = str(json.loads((await ota(wired, "recalls", "launch", str(recall_id), "--json")).stdout)["id"])
    paused = await ota(wired, "campaigns", "pause", cid, "--reason", "supplier hold")
    assert paused.exit_code == 0, paused.output
    for said in (paused.stdout, (await ota(wired, "campaigns", "show", cid)).stdout):
        assert "paused by admin: supplier hold" in said and "paused (paused" not in said, said
    watched = (await ota(wired, "campaigns", "watch", cid, "--once")).stdout
    assert "paused by admin: supplier hold" in watched and "paused (paused" not in watched, watched


async def test_vehicles_show_has_the_timeline_and_says_signed_or_declared(wired: Env) -> None:
    env = wired
    vins, release_id = await _fleet(env, 2)
    recall_id = await _recall(env, release_id, {})
    await ota(env, "recalls", "launch", str(recall_id))
    env.clock.advance(60)
    await env.inject(manifest(vins[0], 1, version="0.9.0"))  # the car's own signed word
    api = await _get(env, f"/api/v1/vehicles/{vins[0]}/timeline")
    shown = await ota(env, "vehicles", "show", vins[0], "--json")
    assert shown.exit_code == 0, shown.output
    body = json.loads(shown.stdout)
    assert body["entries"] == api["entries"] and body["next_step"] == api["next_step"]
    assert [c["wave"] for c in body["campaigns"]] == [1]
    kinds = {e["kind"] for e in body["entries"]}
    assert {"notice", "manifest"} <= kinds

    human = await ota(env, "vehicles", "show", vins[0])
    assert human.exit_code == 0, human.output
    assert "Timeline" in human.stdout and "next step:" in human.stdout
    assert "runs 0.9.0 (signed report, 2026-03-01 12:01 UTC; declared 1.0.0)" in human.stdout
    other = await ota(env, "vehicles", "show", vins[1])
    assert "runs 1.0.0 (declared at registration, no signed report yet)" in other.stdout


async def test_tokens_list_and_revoke_answer_in_json(wired: Env) -> None:
    made = json.loads((await ota(wired, "tokens", "create", "--name", "carol", "--role", "viewer", "--json")).stdout)
    listed = await ota(wired, "tokens", "list", "--json")
    assert listed.exit_code == 0, listed.output
    records = json.loads(listed.stdout)
    [carol] = [r for r in records if r["name"] == "carol"]
    assert carol["role"] == "viewer" and carol["revoked_at"] is None and made["token"] not in listed.stdout
    revoked = await ota(wired, "tokens", "revoke", str(carol["id"]), "--json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked_at"]
    again = json.loads((await ota(wired, "tokens", "list", "--json")).stdout)
    assert [r["revoked_at"] is not None for r in again if r["name"] == "carol"] == [True]
    missing = await ota(wired, "tokens", "revoke", "9999")
    assert missing.exit_code == 1 and "404" in missing.stderr


async def test_retrying_the_failed_cars_of_a_paused_campaign_says_it_stays_paused(wired: Env) -> None:
    """Outside test (issue 18): retry answered "2 cars" and nothing moved until a resume nobody mentioned."""
    vins, release_id = await _fleet(wired, 2)
    recall_id = await _recall(wired, release_id, {})
    cid = json.loads((await ota(wired, "recalls", "launch", str(recall_id), "--json")).stdout)["id"]
    nonces = await wired.nonces()
    await wired.inject(report(cid, vins[0], nonces[vins[0]], ReportState.FAILED, reason=FailureReason.DOWNLOAD_FAILED))
    assert (await ota(wired, "campaigns", "pause", str(cid), "--reason", "calls")).exit_code == 0
    retried = await ota(wired, "campaigns", "retry", str(cid))
    assert retried.exit_code == 0, retried.output
    assert "1 cars" in retried.stdout and f"ota campaigns resume {cid}" in retried.stdout, retried.stdout
