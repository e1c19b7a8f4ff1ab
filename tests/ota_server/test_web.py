"""The dashboard's JSON APIs, the VIN timeline and its next step, the public look-up and the login cookie.

In-process (SQLite, FakePublisher, simulated time); the pages themselves are driven in a
real browser by tests/browser.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from firmware_bundles.messages import FailureReason
from firmware_bundles.messages import ReportState as S
from ota_server.api.auth import SESSION_COOKIE
from ota_server.config import Settings
from ota_server.domain.reasons import PLAIN
from ota_server.web import timeline as timelines
from ota_server.web.lookup import AddressBuckets
from ota_server.web.sse import snapshot_events
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import launched, recall_body, remedied, report, upload, vehicle, vin

CAR_OK, CAR_FAILS, CAR_DEFERS, CAR_SILENT = (vin(n) for n in range(1, 5))
FLEET = [CAR_OK, CAR_FAILS, CAR_DEFERS, CAR_SILENT]
HEALTH_CHECK = f"{PLAIN['health_check_failed']} (health_check_failed)"  # a code as it is shown: words (code)


async def _recall_run(env: Env) -> tuple[int, dict[str, str]]:
    """Four cars: one remedied, one rolled back, one deferred (not parked), one silent."""
    cid = (await launched(env.client, FLEET))["id"]
    nonces = await env.nonces()
    for state in (S.NOTIFIED, S.DOWNLOADING, S.VERIFYING, S.INSTALLING, S.REBOOTING):
        await env.inject(report(cid, CAR_OK, nonces[CAR_OK], state))
    env.clock.advance(60)
    await env.inject(remedied(cid, CAR_OK, nonces[CAR_OK]))
    for state in (S.NOTIFIED, S.DOWNLOADING, S.INSTALLING, S.REBOOTING):
        await env.inject(report(cid, CAR_FAILS, nonces[CAR_FAILS], state))
    env.clock.advance(30)
    await env.inject(report(cid, CAR_FAILS, nonces[CAR_FAILS], S.ROLLED_BACK, reason=FailureReason.HEALTH_CHECK_FAILED))
    await env.inject(report(cid, CAR_DEFERS, nonces[CAR_DEFERS], S.NOTIFIED))
    await env.inject(
        report(cid, CAR_DEFERS, nonces[CAR_DEFERS], S.DEFERRED, deferrals=1, detail="not_parked: the car is not parked")
    )
    return cid, nonces


# --- campaign dashboard -------------------------------------------------------------------


async def test_dashboard_has_the_funnel_waves_series_and_the_failure_pattern(env: Env) -> None:
    cid, _ = await _recall_run(env)
    body = await env.get_json(f"/api/v1/campaigns/{cid}/dashboard")
    assert body["population"] == 4 and body["remedied"] == 1 and body["errors"] == 1 and body["in_progress"] == 2
    counts = body["counts"]
    assert isinstance(counts, dict) and sum(counts.values()) == 4
    assert (counts["remedied"], counts["rolled_back"], counts["deferred"], counts["pending"]) == (1, 1, 1, 1)
    funnel = {stage["stage"]: stage["cars"] for stage in body["funnel"]}
    assert funnel == {
        "population": 4,
        "notified": 4,
        "answered": 3,
        "downloading": 2,
        "installing": 2,
        "remedied": 1,
    }
    series = body["remedied_over_time"]
    assert isinstance(series, list) and [p["cars"] for p in series] == [1]
    assert series[0]["at"].startswith("2026-03-01T12:01")
    assert [p["cars"] for p in body["failures_over_time"]] == [1]
    (wave,) = body["waves"]
    assert (wave["spec"], wave["size"], wave["remedied"], wave["errors"], wave["gate"]) == ("100%", 4, 1, 1, "waiting")
    assert wave["success_threshold_percent"] == 90
    failures = body["failures"]
    assert isinstance(failures, dict) and failures["total"] == 1
    assert failures["groups"] == [
        {
            "state": "rolled_back",
            "reason": "health_check_failed",
            "reason_text": "the new software failed its health check; the previous software runs again",
            "model": "Sedan",
            "hardware_id": "ecu-main",
            "software_version": "1.0.0",
            "cars": 1,
        }
    ]
    assert failures["by_model"] == [{"value": "Sedan", "text": None, "failures": 1, "cars": 4}]
    # Outside test (issue 18): the breakdown by reason gave the code alone.
    assert failures["by_reason"] == [
        {"value": "health_check_failed", "text": PLAIN["health_check_failed"], "failures": 1, "cars": 1}
    ]
    assert [(car["vin"], car["reason_text"]) for car in failures["recent"]] == [
        (CAR_FAILS, "the new software failed its health check; the previous software runs again")
    ]


async def test_cars_of_a_wave_not_open_yet_are_not_counted_in_progress(env: Env) -> None:
    """Outside test (issue 18): the "In progress" tile counted every pending car, notified or not."""
    vins = [vin(n) for n in range(11, 14)]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(v) for v in vins]})
    assert resp.status_code == 201, resp.text
    release = (await upload(env.client)).json()
    rollout = {"waves": [{"cars": 1}, {"percent": 100}]}
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release["id"]) | {"rollout": rollout})
    assert recall.status_code == 201, recall.text
    cid = (await env.client.post(f"/api/v1/recalls/{recall.json()['id']}/launch")).json()["id"]
    await env.runtime.dispatcher.idle()
    body = await env.get_json(f"/api/v1/campaigns/{cid}/dashboard")
    assert body["counts"]["pending"] == 3
    assert (body["in_progress"], body["not_notified"]) == (1, 2), body
    [summary] = (await env.client.get("/api/v1/dashboard/campaigns")).json()
    assert (summary["in_progress"], summary["not_notified"]) == (1, 2), summary


async def test_campaign_summaries_and_unknown_campaigns(env: Env) -> None:
    cid, _ = await _recall_run(env)
    resp = await env.client.get("/api/v1/dashboard/campaigns")
    assert resp.status_code == 200
    (summary,) = resp.json()
    assert summary["id"] == cid and summary["recall_number"] == "24V-123"
    assert (summary["population"], summary["remedied"], summary["errors"], summary["in_progress"]) == (4, 1, 1, 2)
    assert (await env.client.get("/api/v1/campaigns/999/dashboard")).status_code == 404
    assert (await env.client.get("/api/v1/campaigns/999/stream")).status_code == 404


async def test_the_stream_sends_a_dashboard_snapshot(env: Env) -> None:
    cid, _ = await _recall_run(env)
    resp = await env.client.get(f"/api/v1/campaigns/{cid}/stream", params={"max_events": 1})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-store"
    assert resp.text.startswith("retry: ")
    (data,) = re.findall(r"^event: snapshot\nid: 1\ndata: (.*)$", resp.text, flags=re.M)
    assert json.loads(data)["remedied"] == 1


async def test_snapshot_events_send_on_change_beat_when_quiet_and_stop() -> None:
    now = [0.0]
    fingerprints = iter([1, 1, 2, 2, 2, 2, 2, 2])
    built: list[int] = []
    current = [0]

    async def fingerprint() -> object:
        current[0] = next(fingerprints)
        return current[0]

    async def snapshot() -> str:
        built.append(current[0])
        return f'{{"v": {current[0]}}}'

    async def connected() -> bool:
        return False

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    events = [
        e
        async for e in snapshot_events(
            fingerprint,
            snapshot,
            connected,
            interval=1.0,
            heartbeat=3.0,
            lifetime=7.0,
            sleep=sleep,
            monotonic=lambda: now[0],
        )
    ]
    assert events[0] == "retry: 2000\n\n"
    snapshots = [e for e in events if e.startswith("event: snapshot")]
    assert snapshots == ['event: snapshot\nid: 1\ndata: {"v": 1}\n\n', 'event: snapshot\nid: 2\ndata: {"v": 2}\n\n']
    assert built == [1, 2]  # nothing built while the fingerprint stood still
    assert events.count(": heartbeat\n\n") == 1  # quiet from t=2 to t=5
    assert now[0] == 7.0  # ended at its lifetime: the browser reconnects

    gone = [True]

    async def disconnected() -> bool:
        return gone[0]

    stopped = [e async for e in snapshot_events(fingerprint, snapshot, disconnected, sleep=sleep)]
    assert stopped == ["retry: 2000\n\n"]


# --- customer care: the timeline of one VIN ------------------------------------------------


async def test_timeline_of_a_remedied_car_lists_notice_reports_and_remedy(env: Env) -> None:
    await _recall_run(env)
    body = await env.get_json(f"/api/v1/vehicles/{CAR_OK.lower()}/timeline")
    entries = body["entries"]
    assert isinstance(entries, list)
    assert [e["kind"] for e in entries] == ["notice", "report", "report", "report", "report", "report", "remedied"]
    assert entries[0]["summary"] == "Notice sent to the car: Brake assist software"
    assert entries[-1]["at"].startswith("2026-03-01T12:01")
    assert body["next_step"] == "24V-123: Nothing to do: remedied over the air on 2026-03-01 12:01 UTC."
    assert body["action"] == "none"
    assert "nonce" not in json.dumps(body)


async def test_timeline_of_a_twice_rolled_back_car_says_book_a_dealer_then_records_the_dealer(env: Env) -> None:
    cid, _ = await _recall_run(env)
    resp = await env.client.post(f"/api/v1/campaigns/{cid}/retry-failed")
    assert resp.status_code == 200 and resp.json()["vehicles"] == 1
    await env.runtime.dispatcher.idle()
    second = (await env.nonces())[CAR_FAILS]
    await env.inject(report(cid, CAR_FAILS, second, S.ROLLED_BACK, attempt=2, reason=FailureReason.HEALTH_CHECK_FAILED))
    body = await env.get_json(f"/api/v1/vehicles/{CAR_FAILS}/timeline")
    # Outside test (issue 18): the code was shown alone ("rolled back once (health_check_failed)").
    assert body["next_step"] == f"24V-123: Book a dealer visit: the car rolled back twice; last: {HEALTH_CHECK}."
    assert body["action"] == "dealer"
    [row] = body["campaigns"]
    assert (row["reason"], row["reason_text"]) == ("health_check_failed", PLAIN["health_check_failed"])
    kinds = [e["kind"] for e in body["entries"]]
    assert kinds.count("notice") == 2 and kinds.count("failure") == 2 and "retry" in kinds
    failure = next(e for e in body["entries"] if e["kind"] == "failure")
    assert failure["reason"] == "health_check_failed"
    assert failure["summary"] == f"Rolled back to the previous software: {HEALTH_CHECK}"

    outcome = await env.client.post(
        f"/api/v1/campaigns/{cid}/vehicles/{CAR_FAILS}/outcome",
        json={"outcome": "remedied_at_dealer", "evidence": "Controller reflashed", "reference": "RO-4711"},
    )
    assert outcome.status_code == 200, outcome.text
    body = await env.get_json(f"/api/v1/vehicles/{CAR_FAILS}/timeline")
    last = body["entries"][-1]
    assert last["kind"] == "operator"
    assert last["summary"] == "Remedied at a dealer (recorded by admin): Controller reflashed"
    assert body["next_step"] == (
        "24V-123: Nothing to do: remedied at a dealer on 2026-03-01 12:01 UTC, repair order RO-4711, recorded by admin."
    )


async def test_timeline_of_a_deferred_car_says_what_it_waits_for(env: Env) -> None:
    await _recall_run(env)
    body = await env.get_json(f"/api/v1/vehicles/{CAR_DEFERS}/timeline")
    assert body["next_step"] == (
        "24V-123: Waiting for the car to be parked; deferred since 2026-03-01 12:01 UTC: "
        "the car is not parked (not_parked). The car installs by itself then, nothing to do."
    )
    [row] = body["campaigns"]
    assert (row["reason"], row["reason_text"]) == ("not_parked", "the car is not parked")
    deferral = body["entries"][-1]
    assert deferral["kind"] == "deferral"
    assert deferral["summary"] == (
        "Car deferred the update: the car is not parked (not_parked); the car said: the car is not parked (deferral 1)"
    )


async def test_timeline_refuses_bad_vins_and_answers_404_for_unknown_ones(env: Env) -> None:
    bad = await env.client.get("/api/v1/vehicles/NOT-A-VIN/timeline")
    assert bad.status_code == 422 and "not a valid VIN" in bad.json()["detail"]
    unknown = await env.client.get(f"/api/v1/vehicles/{vin(77)}/timeline")
    assert unknown.status_code == 404
    await env.client.post("/api/v1/vehicles", json=vehicle(vin(78)))
    lonely = await env.get_json(f"/api/v1/vehicles/{vin(78)}/timeline")
    assert lonely["campaigns"] == [] and lonely["next_step"] == "Nothing to do: this car is in no recall campaign."


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _car(state: str, **changes: Any) -> timelines.CarRow:
    base: dict[str, Any] = {
        "state": state,
        "reason": None,
        "detail": None,
        "updated_at": T0,
        "notified_at": T0,
        "wave": 0,
        "retries": 0,
        "next_retry_at": None,
    }
    return timelines.CarRow(**{**base, **changes})


ACTIVE = timelines.CampaignRow(status="active", status_reason=None, current_wave=0, kind="remedy", max_retries=2)


@pytest.mark.parametrize(
    ("car", "campaign", "online", "expected", "action"),
    [
        (_car("pending", notified_at=None, wave=1), ACTIVE, True, "Waiting for wave 2 to open (wave 1 is", "wait"),
        (
            _car("pending", notified_at=None),
            timelines.CampaignRow("paused", "paused by alice: checking", 0, "remedy", 2),
            True,
            "Waiting: the campaign is paused by alice (checking); the car gets its notice",
            "wait",
        ),
        (
            _car("pending"),
            ACTIVE,
            False,
            "Notice sent 2026-03-01 12:00 UTC; waiting for the car to come online",
            "wait",
        ),
        (_car("pending"), ACTIVE, True, "Notice sent 2026-03-01 12:00 UTC; waiting for the car to acknowledge", "wait"),
        (_car("downloading"), ACTIVE, True, "Nothing to do: the car is downloading the update now", "wait"),
        (
            _car("failed", reason="download_failed", next_retry_at=T0 + timedelta(minutes=5), errors_so_far=1),
            ACTIVE,
            True,
            "Wait: the server sends a new notice by itself at 2026-03-01 12:05 UTC (retry 1 of 2)",
            "wait",
        ),
        (
            _car("timed_out", reason="timed_out", errors_so_far=3),
            ACTIVE,
            True,
            "Book a dealer visit: the car timed out 3 times; last: no report within the time the campaign allows",
            "dealer",
        ),
        (_car("declined"), ACTIVE, True, "The owner declined the update on 2026-03-01 12:00 UTC", "dealer"),
        (
            _car("unreachable", reason="stolen", recorded_by="bob"),
            ACTIVE,
            True,
            "Recorded as unreachable: the car was stolen (stolen), on 2026-03-01 12:00 UTC by bob.",
            "dealer",
        ),
        (
            _car("deferred", detail="battery_low: 12% < 30%"),
            ACTIVE,
            True,
            "Waiting for the car to have its battery charged",
            "wait",
        ),
        (
            _car("deferred", detail="owner_postponed: later"),
            ACTIVE,
            True,
            "Waiting for the owner to accept the update; deferred since 2026-03-01 12:00 UTC: "
            "the owner postponed the update (owner_postponed). The car installs by itself then",
            "wait",
        ),
        (
            _car("withdrawn"),
            timelines.CampaignRow("cancelled", "cancelled by bob: wrong fix", 0, "remedy", 2),
            True,
            "Nothing to do: the campaign was cancelled by bob (wrong fix) before this car started.",
            "none",
        ),
        (
            _car("pending", notified_at=None),
            timelines.CampaignRow("paused", "paused by alice", 0, "remedy", 2),
            True,
            "Waiting: the campaign is paused by alice; the car gets its notice",
            "wait",
        ),
        (
            _car("withdrawn"),
            timelines.CampaignRow("cancelled", "superseded", 0, "remedy", 2),
            True,
            "Nothing to do: the campaign was cancelled (superseded)",
            "none",
        ),
        (
            _car("remedied"),
            timelines.CampaignRow("active", None, 0, "rollback", 0),
            True,
            "Nothing to do now: the car was returned",
            "none",
        ),
        (_car("inspected_not_needed"), ACTIVE, True, "Nothing to do: inspected on 2026-03-01 12:00 UTC", "none"),
    ],
)
def test_next_step_in_plain_words(
    car: timelines.CarRow, campaign: timelines.CampaignRow, online: bool, expected: str, action: str
) -> None:
    text, who = timelines.next_step(car, campaign, online=online, last_seen=T0)
    assert text.startswith(expected), text
    assert who == action


# --- the public VIN look-up ----------------------------------------------------------------


@pytest.fixture
async def public(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no token at all, as an owner's browser."""
    transport = httpx.ASGITransport(app=env.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ota.test") as client:
        yield client


async def test_lookup_says_fixed_not_fixed_and_on_its_way_without_a_token(env: Env, public: httpx.AsyncClient) -> None:
    await _recall_run(env)
    fixed = (await public.get("/api/v1/public/recalls", params={"vin": CAR_OK.lower()})).json()
    assert fixed["vin"] == CAR_OK and fixed["open_recalls"] == 0
    (recall,) = fixed["recalls"]
    assert (recall["recall_number"], recall["status"], recall["status_text"], recall["fixed"]) == (
        "24V-123",
        "remedied",
        "Fixed",
        True,
    )
    assert recall["remedied_on"] == "2026-03-01" and recall["summary"] == "Brake assist may disengage"
    failed = (await public.get("/api/v1/public/recalls", params={"vin": CAR_FAILS})).json()
    assert failed["open_recalls"] == 1 and failed["message"] == "Open recalls: 1. Not fixed yet."
    (told,) = failed["recalls"]
    assert (told["status_text"], told["fixed"]) == ("Not fixed yet", False)
    # What happened is said once, and what to do once (it used to say "Contact a dealer" three times).
    assert told["what_happened"].startswith(
        "The update was tried on 2026-03-01; your vehicle went back to its previous software."
    )
    assert told["what_to_do"] == "Book the free repair at a dealer, or contact us to try the update again."
    assert "dealer" not in told["status_text"] + told["what_happened"]
    assert told["contact"] == {
        "name": "Dana Smith",
        "role": "Recall coordinator",
        "phone": "+1 555 0100",
        "email": "recalls@example.com",
    }
    waiting = (await public.get("/api/v1/public/recalls", params={"vin": CAR_DEFERS})).json()
    assert waiting["recalls"][0]["what_happened"].startswith("The update is ready and waits until your vehicle")
    assert waiting["recalls"][0]["what_to_do"].startswith("Nothing to do: the update installs by itself.")


async def test_lookup_shows_nothing_internal(env: Env, public: httpx.AsyncClient) -> None:
    cid, nonces = await _recall_run(env)
    for car in FLEET:
        text = (await public.get("/api/v1/public/recalls", params={"vin": car})).text
        assert not any(nonce in text for nonce in nonces.values())
        assert not [other for other in FLEET if other != car and other in text]
        for internal in ("health_check_failed", "not_parked", "rolled_back", "deferred", "attempt", "campaign_id"):
            assert internal not in text, (car, internal)
        assert f'"id":{cid}' not in text.replace(" ", "")
    # A valid VIN nobody registered is not told "no recall": the answer says what the check covers.
    await env.client.post("/api/v1/vehicles", json=vehicle(vin(50), model="Coupe"))
    unknown = (await public.get("/api/v1/public/recalls", params={"vin": vin(51)})).json()
    known = (await public.get("/api/v1/public/recalls", params={"vin": vin(50)})).json()
    assert (unknown["known"], unknown["model"], unknown["recalls"]) == (False, "", [])
    assert unknown["message"].startswith("We have no record of this vehicle. That is not the same as 'no recall'")
    assert (known["known"], known["model"], known["model_year"], known["recalls"]) == (True, "Coupe", 2022, [])
    assert known["message"] == "No open or past recall of Example Motors affects this vehicle."
    assert "recalls of Example Motors registered with this service" in known["coverage"]


async def test_lookup_rejects_a_bad_vin_with_a_clear_422(public: httpx.AsyncClient) -> None:
    short = await public.get("/api/v1/public/recalls", params={"vin": "12345"})
    assert short.status_code == 422
    assert short.json()["detail"] == "vin: not a valid VIN: VIN must have 17 characters, got 5"
    digit = await public.get("/api/v1/public/recalls", params={"vin": vin(1)[:8] + "X" + vin(1)[9:]})
    assert digit.status_code == 422 and "check digit" in digit.json()["detail"]
    letters = await public.get("/api/v1/public/recalls", params={"vin": "1HGCM82633A00435O"})
    assert letters.status_code == 422 and "I, O and Q are never used" in letters.json()["detail"]


async def test_lookup_of_a_filed_recall_not_launched_yet(env: Env, public: httpx.AsyncClient) -> None:
    car = vin(60)
    await env.client.post("/api/v1/vehicles", json=vehicle(car))
    release = await upload(env.client)
    resp = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"], "24V-900"))
    assert resp.status_code == 201, resp.text
    body = (await public.get("/api/v1/public/recalls", params={"vin": car})).json()
    (recall,) = body["recalls"]
    assert (recall["recall_number"], recall["status"], recall["fixed"]) == (
        "24V-900",
        "remedy_not_yet_available",
        False,
    )


async def test_lookup_is_rate_limited_per_address(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, lookup_rate_per_min=1.0, lookup_burst=2)
    async with running(settings) as env:
        transport = httpx.ASGITransport(app=env.app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://ota.test") as client:
            answers = [await client.get("/api/v1/public/recalls", params={"vin": vin(1)}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert int(answers[2].headers["Retry-After"]) >= 1
        other = httpx.ASGITransport(app=env.app, client=("203.0.113.8", 5555))
        async with httpx.AsyncClient(transport=other, base_url="http://ota.test") as client:
            assert (await client.get("/api/v1/public/recalls", params={"vin": vin(1)})).status_code == 200


def test_address_buckets_group_ipv6_by_64_and_stay_bounded() -> None:
    assert AddressBuckets.key("2001:db8:1:2:3:4:5:6") == AddressBuckets.key("2001:db8:1:2:ffff::1")
    assert AddressBuckets.key("2001:db8:1:3::1") != AddressBuckets.key("2001:db8:1:2::1")
    buckets = AddressBuckets(60.0, 1, lambda: T0, max_keys=3)
    for n in range(10):
        buckets.take(f"198.51.100.{n}")
    assert len(buckets) == 3


# --- browser sign-in: the cookie reads; it writes only with the CSRF token (test_web_csrf.py) ---------


async def _login(env: Env, public: httpx.AsyncClient, **form: str) -> httpx.Response:
    token = env.runtime.settings.admin_token_file.read_text().strip()
    return await public.post("/ui/login", data={"token": token, **form})


async def test_login_sets_an_httponly_strict_cookie_accepted_on_get_only(env: Env, public: httpx.AsyncClient) -> None:
    resp = await _login(env, public, next="/ui/campaigns/1")
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/campaigns/1"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Max-Age=43200" in cookie and "Path=/" in cookie and "Secure" not in cookie  # plain http here
    assert (await public.get("/api/v1/campaigns")).status_code == 200
    assert (await public.get("/api/v1/whoami")).json() == {"name": "admin", "role": "admin"}
    # The same cookie on a write without the session's CSRF token is refused: 403, nothing created.
    write = await public.post("/api/v1/tokens", json={"name": "mallory", "role": "admin"})
    assert write.status_code == 403 and "X-CSRF-Token" in write.json()["detail"]
    tokens = await env.client.get("/api/v1/tokens")
    assert [t["name"] for t in tokens.json()["items"]] == ["admin"]
    # Log out: the cookie is cleared and reading needs a token again.
    out = await public.post("/ui/logout")
    assert out.status_code == 303 and 'ota_session=""' in out.headers["set-cookie"]
    assert (await public.get("/api/v1/campaigns")).status_code == 401


async def test_pages_need_the_cookie_and_login_refuses_bad_tokens_and_foreign_sites(
    env: Env, public: httpx.AsyncClient
) -> None:
    page = await public.get("/ui/campaigns/3?x=1")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=%2Fui%2Fcampaigns%2F3%3Fx%3D1"
    bad = await public.post("/ui/login", data={"token": "ota_nope", "next": "/ui/"})
    assert bad.status_code == 303 and bad.headers["location"].startswith("/ui/login?error=1")
    assert "set-cookie" not in bad.headers
    token = env.runtime.settings.admin_token_file.read_text().strip()
    cross = await public.post("/ui/login", data={"token": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers
    elsewhere = await _login(env, public, next="https://evil.example/ui/")
    assert elsewhere.headers["location"] == "/ui/"
    for path in ("/ui/", "/ui/campaigns/1", "/ui/vehicles", f"/ui/vehicles/{vin(1)}"):
        resp = await public.get(path)
        assert resp.status_code == 200, path
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert resp.headers["x-frame-options"] == "DENY"


async def test_public_pages_and_assets_are_served(public: httpx.AsyncClient) -> None:
    lookup = await public.get("/lookup")
    assert lookup.status_code == 200 and "<h1>Is your vehicle affected by a recall?</h1>" in lookup.text
    assert (await public.get("/")).headers["location"] == "/ui/"
    login = await public.get("/ui/login")
    assert login.status_code == 200
    # Outside test (issue 18): it said "The pages only read ... every change is made with the ota CLI or the API".
    said = " ".join(login.text.split())
    assert "only read" not in said and "every change is made with" not in said
    assert "an operator pauses, resumes, cancels, retries and records outcomes" in said
    assert "every action asks for confirmation first" in said
    for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        resp = await public.get(f"/ui/static/{asset}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"]


def test_pages_and_assets_load_nothing_from_elsewhere_and_never_inject_html() -> None:
    web = Path(__file__).resolve().parents[2] / "ota_server" / "web"
    files = [*web.glob("pages/*.html"), *web.glob("static/*")]
    assert len(files) >= 8
    for path in files:
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path  # no CDN, no external asset
        assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write", text), path


async def test_vehicle_search_redirects_to_the_vins_page(env: Env, public: httpx.AsyncClient) -> None:
    await _login(env, public)
    resp = await public.get("/ui/vehicles", params={"vin": f" {vin(1).lower()} "})
    assert resp.status_code == 303 and resp.headers["location"] == f"/ui/vehicles/{vin(1)}"
