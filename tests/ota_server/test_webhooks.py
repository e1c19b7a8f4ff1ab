"""Webhooks: every event of a campaign reaches a real HTTP receiver on loopback, signed, once per
delivery id, across a server restart and a 500; dead endpoints are paused; bad input is a 422."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from firmware_bundles.messages import FailureReason
from firmware_bundles.messages import ReportState as S
from ota_server.cli import common as cli_common
from ota_server.config import Settings
from ota_server.db.models import Campaign, OutboxEvent, Webhook
from ota_server.regulator.scheduled_export import ReportExporter
from ota_server.services.webhook_delivery import WebhookSender, backoff_s
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import FakeClock, launched, recall_body, remedied, report, vin
from tests.ota_server.test_cli_ops import LoopTransport, ota
from tests.ota_server.test_inventory import _registered, manifest
from tests.ota_server.test_rollout import _fleet, _launch

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-for-the-tests-0123456789"
VINS = [vin(n) for n in range(1, 4)]


def docs_verify() -> Callable[..., bool]:
    """The ``verify`` function of docs/webhooks.md, run as written there."""
    text = (ROOT / "docs" / "webhooks.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in block)
    scope: dict[str, Any] = {}
    exec(compile(code, "docs/webhooks.md", "exec"), scope)  # our own documentation
    verify: Callable[..., bool] = scope["verify"]
    return verify


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """A real HTTP server on loopback: records each request, answers from ``codes`` (then 200)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    codes: deque[int] = field(default_factory=deque)
    always: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.answered < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                code = state.always or (state.codes.popleft() if state.codes else 200)
                state.requests.append(Received(dict(self.headers.items()), body, code))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The ``env`` fixture's server without its periodic sender: the tests run the sender themselves."""
    return make_settings(tmp_path, webhook_interval_s=0)


@pytest.fixture
def quiet_settings(settings: Settings) -> Settings:
    return settings


async def _add(env: Env, url: str, **body: Any) -> dict[str, Any]:
    resp = await env.client.post("/api/v1/webhooks", json={"url": url, **body})
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


async def _get(env: Env, url: str) -> Any:
    resp = await env.client.get(url)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _sender(env: Env) -> WebhookSender:
    sender = env.runtime.webhooks
    assert sender is not None
    return sender


async def test_every_event_reaches_the_receiver_once_signed_across_a_restart_and_a_500(
    quiet_settings: Settings, receiver: Receiver
) -> None:
    async with running(quiet_settings) as env:
        hook = await _add(env, receiver.url, secret=SECRET)
        assert hook["secret"] == SECRET and hook["status"] == "active" and hook["events"] is None
        listed = await _get(env, "/api/v1/webhooks")
        assert [w["id"] for w in listed["items"]] == [hook["id"]] and "secret" not in listed["items"][0]
        campaign = await launched(env.client, VINS)
        cid = campaign["id"]
        nonces = await env.nonces()
        await env.inject(report(cid, VINS[0], nonces[VINS[0]], S.FAILED, reason=FailureReason.DOWNLOAD_FAILED))
        for action in ("pause", "resume", "cancel"):
            resp = await env.client.post(f"/api/v1/campaigns/{cid}/{action}", json={"reason": "test"})
            assert resp.status_code == 200, resp.text
        # The server stops with every event committed and none sent yet.
        assert receiver.requests == []
    receiver.codes.append(500)  # the first attempt after the restart is refused
    async with running(quiet_settings) as env:
        sender = _sender(env)
        assert await sender.run_once() == 5
        assert [r.answered for r in receiver.requests].count(500) == 1
        refused = next(r for r in receiver.requests if r.answered == 500)
        assert await sender.run_once() == 0  # not due yet: backing off
        env.clock.advance(backoff_s(1, lambda: 1.0))
        assert await sender.run_once() == 1
        page = await _get(env, f"/api/v1/webhooks/{hook['id']}/deliveries")
        first = await _get(env, f"/api/v1/webhooks/{hook['id']}/deliveries?limit=3")
        rest = await _get(env, f"/api/v1/webhooks/{hook['id']}/deliveries?limit=3&cursor={first['next_cursor']}")
        assert [d["id"] for d in first["items"] + rest["items"]] == [d["id"] for d in page["items"]]
        assert rest["next_cursor"] is None
    delivered = receiver.delivered()
    types = sorted(r.headers["X-OTA-Event"] for r in delivered)
    assert types == sorted(
        ["campaign.launched", "vehicle.failed", "campaign.paused", "campaign.resumed", "campaign.cancelled"]
    )
    ids = [r.headers["X-OTA-Delivery"] for r in delivered]
    assert len(set(ids)) == len(ids) == 5  # each delivery id received (and answered 2xx) once
    assert refused.headers["X-OTA-Delivery"] in ids  # the retry kept its delivery id
    verify = docs_verify()
    for r in receiver.requests:
        assert verify(SECRET, r.headers, r.body, now=float(r.headers["X-OTA-Timestamp"]) + 10)
        assert not verify("another-secret-0123456789", r.headers, r.body, now=float(r.headers["X-OTA-Timestamp"]))
        assert not verify(SECRET, r.headers, r.body, now=float(r.headers["X-OTA-Timestamp"]) + 301)  # too old
        payload = json.loads(r.body)
        assert payload["type"] == r.headers["X-OTA-Event"]
        assert payload["subject"]["campaign_id"] == cid and payload["subject"]["recall_number"] == "24V-123"
    failed = json.loads(next(r.body for r in delivered if r.headers["X-OTA-Event"] == "vehicle.failed"))
    assert failed["subject"]["vin"] == VINS[0] and failed["data"]["reason"] == "download_failed"
    items = page["items"]
    assert len(items) == 5
    assert {d["status"] for d in items} == {"delivered"}
    assert sorted(d["attempts"] for d in items) == [1, 1, 1, 1, 2]


async def test_an_event_is_written_only_with_the_change_that_caused_it(env: Env) -> None:
    campaign = await launched(env.client, VINS)
    with env.runtime.sessions() as session:
        before = session.scalar(select(func.count()).select_from(OutboxEvent)) or 0
        row = session.get(Campaign, campaign["id"])
        assert row is not None
        row.status, row.status_reason, row.status_changed_at = "paused", "paused by test", env.clock()
        session.flush()
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == before + 1  # in the transaction
        session.rollback()
    with env.runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == before  # rolled back with it
        types = session.scalars(select(OutboxEvent.type)).all()
    assert "campaign.paused" not in types and types.count("campaign.launched") == 1


async def test_a_filter_sends_only_the_chosen_events(env: Env, receiver: Receiver) -> None:
    await _add(env, receiver.url, events=["campaign.cancelled"])
    cid = (await launched(env.client, VINS))["id"]
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/cancel", json={"reason": "x"})).status_code == 200
    await _sender(env).run_once()
    assert [r.headers["X-OTA-Event"] for r in receiver.requests] == ["campaign.cancelled"]


async def test_a_dead_endpoint_is_paused_after_the_bound_and_sends_again_when_resumed(
    env: Env, receiver: Receiver
) -> None:
    hook = await _add(env, receiver.url)
    cid = (await launched(env.client, VINS))["id"]
    for action in ("pause", "resume"):
        assert (await env.client.post(f"/api/v1/campaigns/{cid}/{action}", json={"reason": "x"})).status_code == 200
    receiver.always = 503
    sender = WebhookSender(env.runtime.sessions, env.clock, pause_after_failures=5, rand=lambda: 1.0)
    runs = 0
    while (await _get(env, "/api/v1/webhooks"))["items"][0]["status"] == "active":
        await sender.run_once()
        env.clock.advance(3600)
        runs += 1
        assert runs < 10, "never paused"
    listed = (await _get(env, "/api/v1/webhooks"))["items"][0]
    assert listed["consecutive_failures"] >= 5 and "in a row" in listed["paused_reason"]
    sent = len(receiver.requests)
    env.clock.advance(3600)
    assert await sender.run_once() == 0 and len(receiver.requests) == sent  # paused: nothing is sent
    receiver.always = None
    resp = await env.client.post(f"/api/v1/webhooks/{hook['id']}/resume")
    assert resp.status_code == 200 and resp.json()["status"] == "active"
    assert (await env.client.post(f"/api/v1/webhooks/{hook['id']}/resume")).status_code == 409
    await sender.run_once()
    assert {r.headers["X-OTA-Event"] for r in receiver.delivered()} == {
        "campaign.launched",
        "campaign.paused",
        "campaign.resumed",
    }


async def test_a_receiver_down_for_a_minute_is_not_paused(env: Env, receiver: Receiver) -> None:
    """Outside test (issue 18): 20 failed deliveries in about 70 s of a busy campaign paused the webhook, so a
    one-minute restart of the receiver needed an operator to resume it."""
    await _add(env, receiver.url)
    cid = (await launched(env.client, VINS))["id"]
    for _ in range(15):  # 31 events
        for action in ("pause", "resume"):
            assert (await env.client.post(f"/api/v1/campaigns/{cid}/{action}", json={})).status_code == 200
    receiver.always = 503
    sender = WebhookSender(env.runtime.sessions, env.clock, pause_after_failures=20, rand=lambda: 0.0)
    for _ in range(6):
        await sender.run_once()
        env.clock.advance(10)
    listed = (await _get(env, "/api/v1/webhooks"))["items"][0]
    assert listed["consecutive_failures"] >= 20 and listed["status"] == "active", listed
    receiver.always = None
    env.clock.advance(3600)
    assert await sender.run_once() > 0
    listed = (await _get(env, "/api/v1/webhooks"))["items"][0]
    assert listed["status"] == "active" and listed["consecutive_failures"] == 0, listed
    assert receiver.delivered()


async def test_a_4xx_fails_at_once_and_a_day_of_failures_pauses(env: Env, receiver: Receiver) -> None:
    hook = await _add(env, receiver.url)
    campaign = await launched(env.client, VINS)
    receiver.always = 404
    sender = WebhookSender(env.runtime.sessions, env.clock, pause_after_failures=100, pause_after_s=86400)
    await sender.run_once()
    page = await _get(env, f"/api/v1/webhooks/{hook['id']}/deliveries?status=failed")
    items = page["items"]
    assert len(items) == 1
    assert (items[0]["attempts"], items[0]["last_status_code"], items[0]["next_attempt_at"]) == (1, 404, None)
    env.clock.advance(86400)  # a day later, another failure: the webhook is paused
    resp = await env.client.post(f"/api/v1/campaigns/{campaign['id']}/pause", json={"reason": "x"})
    assert resp.status_code == 200, resp.text
    await sender.run_once()
    with env.runtime.sessions() as session:
        row = session.get(Webhook, hook["id"])
        assert row is not None and row.status == "paused" and "failing since" in (row.paused_reason or "")


async def test_two_replicas_running_at_once_send_each_delivery_once(either_env: Env, receiver: Receiver) -> None:
    env = either_env  # SQLite and PostgreSQL
    await _add(env, receiver.url)
    cid = (await launched(env.client, VINS))["id"]
    for action in ("pause", "resume", "cancel"):
        assert (await env.client.post(f"/api/v1/campaigns/{cid}/{action}", json={"reason": "x"})).status_code == 200
    a = WebhookSender(env.runtime.sessions, env.clock)
    b = WebhookSender(env.runtime.sessions, FakeClock())
    await asyncio.gather(a.run_once(), b.run_once(), a.run_once())
    ids = [r.headers["X-OTA-Delivery"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == 4


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"url": "ftp://example.com/x"}, "scheme must be http or https"),
        ({"url": "https://user:pw@example.com/x"}, "no user name or password"),
        ({"url": "https://example.com/" + "a" * 2000}, "2000"),
        ({"url": "https:///nohost"}, "no host"),
        ({"url": "https://example.com/x", "events": ["campaign.exploded"]}, "events[0]"),
        ({"url": "https://example.com/x", "secret": "short"}, "16"),
        ({"url": "https://example.com/x", "extra": 1}, "extra"),
    ],
)
async def test_bad_input_is_refused_with_a_clear_422(env: Env, body: dict[str, Any], words: str) -> None:
    resp = await env.client.post("/api/v1/webhooks", json=body)
    assert resp.status_code == 422, resp.text
    assert words in resp.json()["detail"]


async def test_loopback_only_where_the_setting_allows_it(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, webhook_allow_loopback=False, webhook_interval_s=0)) as env:
        for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/x", "http://169.254.169.254/"):
            resp = await env.client.post("/api/v1/webhooks", json={"url": url})
            assert resp.status_code == 422 and "loopback" in resp.json()["detail"], resp.text
        resp = await env.client.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/"})
        assert resp.status_code == 201, resp.text


async def test_removing_a_webhook_and_reading_an_unknown_one(env: Env, receiver: Receiver) -> None:
    hook = await _add(env, receiver.url + "/T0KEN-in-the-path?key=abc")
    audit = (await _get(env, "/api/v1/audit?limit=1000"))["items"]
    (added,) = [e for e in audit if e["route"] == "/api/v1/webhooks" and e["method"] == "POST"]
    assert added["target"] == {"host": "127.0.0.1"} and added["status"] == 201  # no path, query or secret
    viewer = await env.headers_for("vera", "viewer")
    assert (await env.client.post("/api/v1/webhooks", json={"url": receiver.url}, headers=viewer)).status_code == 403
    # A webhook's URL often holds a secret of its own (a path or query token): viewers do not read it.
    assert (await env.client.get("/api/v1/webhooks", headers=viewer)).status_code == 403
    assert (await env.client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=viewer)).status_code == 403
    assert (await env.client.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 200
    assert (await env.client.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 404
    assert (await env.client.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).status_code == 404
    await launched(env.client, VINS)
    await _sender(env).run_once()
    assert receiver.requests == []


def _events(env: Env) -> list[dict[str, Any]]:
    with env.runtime.sessions() as session:
        return [e.payload for e in session.scalars(select(OutboxEvent).order_by(OutboxEvent.id))]


async def test_the_error_gate_trips_and_a_campaign_completes_each_its_own_event(env: Env) -> None:
    vins = [vin(n) for n in range(1, 6)]
    release = await _fleet(env, vins)
    rollout = {"waves": [{"percent": 100}], "error_threshold_count": 2, "max_retries": 0}
    cid = (await _launch(env, release, rollout=rollout))["id"]
    nonces = await env.nonces()
    for v in vins[:2]:
        await env.inject(report(cid, v, nonces[v], S.FAILED, reason=FailureReason.HEALTH_CHECK_FAILED))
    for v in vins[2:]:
        await env.inject(remedied(cid, v, nonces[v]))
    types = [e["type"] for e in _events(env)]
    assert types.count("vehicle.failed") == 2 and "campaign.threshold_tripped" in types
    assert "campaign.paused" not in types  # the gate, not an operator
    tripped = next(e for e in _events(env) if e["type"] == "campaign.threshold_tripped")
    assert "error threshold" in tripped["data"]["reason"]
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={"reason": "ok"})).status_code == 200
    await env.tick()
    assert [e["type"] for e in _events(env)][-2:] == ["campaign.resumed", "campaign.completed"]


async def test_an_operator_pause_is_never_taken_for_the_error_gate(env: Env) -> None:
    """The gate's event was judged from the status reason's words; an operator may type the same words."""
    release = await _fleet(env, [vin(1), vin(2)])
    cid = (await _launch(env, release))["id"]
    reason = "error threshold crossed in wave 1: calls from the field"
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/pause", json={"reason": reason})).status_code == 200
    paused = [e for e in _events(env) if e["type"].startswith("campaign.") and e["type"] != "campaign.launched"]
    assert [e["type"] for e in paused] == ["campaign.paused"], paused
    assert paused[0]["data"]["reason"].endswith(reason)


async def test_a_safety_recall_waiting_for_approval_is_an_event(env: Env) -> None:
    release = await _fleet(env, [vin(1)])
    body = recall_body(release, "24V-777") | {"safety_recall": True}
    recall = (await env.client.post("/api/v1/recalls", json=body)).json()
    operator = await env.headers_for("olga", "operator")
    resp = await env.client.post(f"/api/v1/recalls/{recall['id']}/launch", headers=operator)
    assert resp.status_code == 202, resp.text
    (event,) = [e for e in _events(env) if e["type"] == "approval.requested"]
    assert event["subject"] == {"recall_id": recall["id"], "recall_number": "24V-777"}
    assert event["data"] == {"requested_by": "olga"}


async def test_the_scheduled_export_says_its_reports_are_ready(env: Env, tmp_path: Path) -> None:
    await launched(env.client, VINS)
    clock = FakeClock()
    clock.now = datetime(2026, 4, 2, 9, 0, tzinfo=UTC)
    written = ReportExporter(env.runtime.sessions, clock, tmp_path, "Example Motors").run_once()
    ready = [e for e in _events(env) if e["type"] == "report.ready"]
    assert {e["data"]["period"] for e in ready} == {"2026-W13", "2026Q1"}
    assert sorted(f for e in ready for f in e["data"]["files"]) == sorted(p.name for p in written)
    assert all(e["subject"]["recall_number"] == "24V-123" for e in ready)


async def test_a_slow_receiver_delays_no_other_webhook(env: Env, receiver: Receiver) -> None:
    release = threading.Event()

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait(30)  # holds the request until the test ends

        def log_message(self, *_args: object) -> None:
            pass

    slow = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        slow_hook = await _add(env, f"http://127.0.0.1:{slow.server_address[1]}/")
        await _add(env, receiver.url)
        await launched(env.client, VINS)
        sender = WebhookSender(env.runtime.sessions, env.clock, timeout_s=0.5)
        await sender.run_once()
        assert [r.headers["X-OTA-Event"] for r in receiver.delivered()] == ["campaign.launched"]
        (delivery,) = (await _get(env, f"/api/v1/webhooks/{slow_hook['id']}/deliveries"))["items"]
        assert delivery["status"] == "pending" and "no answer within" in delivery["last_error"]
    finally:
        release.set()
        slow.shutdown()
        slow.server_close()


async def test_the_cli_adds_lists_and_removes_webhooks(
    env: Env, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cli_common, "transport_override", LoopTransport(httpx.ASGITransport(app=env.app), asyncio.get_running_loop())
    )
    added = await ota(env, "webhooks", "add", receiver.url, "--event", "campaign.launched", "--json")
    assert added.exit_code == 0, added.output
    hook = json.loads(added.output)
    assert hook["events"] == ["campaign.launched"] and len(hook["secret"]) >= 16
    human = await ota(env, "webhooks", "add", "ftp://example.com/")
    assert human.exit_code != 0 and "scheme must be http or https" in human.output
    await launched(env.client, VINS)
    await _sender(env).run_once()
    listed = await ota(env, "webhooks", "list", "--json")
    assert [w["id"] for w in json.loads(listed.output)] == [hook["id"]]
    deliveries = await ota(env, "webhooks", "deliveries", str(hook["id"]), "--status", "delivered", "--json")
    assert [d["event_type"] for d in json.loads(deliveries.output)] == ["campaign.launched"]
    resumed = await ota(env, "webhooks", "resume", str(hook["id"]))
    assert resumed.exit_code != 0 and "not paused" in resumed.output
    removed = await ota(env, "webhooks", "remove", str(hook["id"]))
    assert removed.exit_code == 0 and f"webhook {hook['id']} removed" in removed.output
    assert json.loads((await ota(env, "webhooks", "list", "--json")).output) == []


async def test_a_discrepancy_found_is_an_event_once(env: Env) -> None:
    v = vin(1)
    await _registered(env, [v])
    await env.inject(manifest(v, 1, version="3.1.4"))
    await env.inject(manifest(v, 2, version="3.1.4"))  # the same finding again: stored once, told once
    (event,) = [e for e in _events(env) if e["type"] == "discrepancy.found"]
    assert event["subject"]["vin"] == v and event["data"]["kind"] == "unknown_version"
    assert event["data"]["version"] == "3.1.4"


async def test_a_webhook_gets_the_events_from_its_registration_on_and_old_ones_are_pruned(
    env: Env, receiver: Receiver
) -> None:
    cid = (await launched(env.client, VINS))["id"]
    env.clock.advance(60)
    hook = await _add(env, receiver.url)  # after the launch: not sent to it
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/pause", json={"reason": "x"})).status_code == 200
    sender = _sender(env)
    await sender.run_once()
    assert [r.headers["X-OTA-Event"] for r in receiver.delivered()] == ["campaign.paused"]
    receiver.always = 503
    assert (await env.client.post(f"/api/v1/campaigns/{cid}/resume", json={"reason": "x"})).status_code == 200
    await sender.run_once()  # the resume's delivery is refused: pending, retried later
    env.clock.advance(31 * 86400)
    sender.prune()
    left = [e["type"] for e in _events(env)]
    assert left == ["campaign.resumed"]  # only the event a delivery still waits for
    (pending,) = (await _get(env, f"/api/v1/webhooks/{hook['id']}/deliveries"))["items"]
    assert pending["status"] == "pending" and pending["event_type"] == "campaign.resumed"


async def test_a_status_set_on_a_campaign_not_loaded_yet_is_still_its_event(env: Env) -> None:
    cid = (await launched(env.client, VINS))["id"]
    with env.runtime.sessions() as session:
        row = session.get(Campaign, cid)
        assert row is not None
        session.expire(row)  # as after a commit: the old status is not in memory
        row.status, row.status_changed_at = "cancelled", env.clock()
        session.flush()
        types = session.scalars(select(OutboxEvent.type)).all()
        session.rollback()
    assert "campaign.cancelled" in types
