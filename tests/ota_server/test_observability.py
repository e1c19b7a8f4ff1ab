"""Readiness, Prometheus metrics, JSON logs and the ingest flush on shutdown."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from firmware_bundles import topics
from firmware_bundles.messages import ReportState
from ota_server.config import Settings
from ota_server.http.app import runtime_of
from ota_server.infra.logs import JsonFormatter
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import launched, report, vin

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _scrape(env: Env) -> Samples:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://ota.test") as anon:
        resp = await anon.get("/metrics")  # no token
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


async def test_healthz_and_readyz_need_no_token(env: Env) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://ota.test") as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        resp = await anon.get("/readyz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready", "checks": {"database": True, "mqtt": True}, "not_ready": []}


async def test_readyz_503_names_the_mqtt_link_when_disconnected(env: Env) -> None:
    env.publisher.connected = False
    resp = await env.client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json()["not_ready"] == ["mqtt"]
    assert resp.json()["checks"] == {"database": True, "mqtt": False}


async def test_readyz_503_names_the_database_when_it_does_not_answer(env: Env, tmp_path: Path) -> None:
    working = env.runtime.engine
    env.runtime.engine = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'ota.db'}")  # cannot open
    try:
        resp = await env.client.get("/readyz")
    finally:
        env.runtime.engine.dispose()
        env.runtime.engine = working
    assert resp.status_code == 503
    assert resp.json()["not_ready"] == ["database"]
    assert resp.json()["status"] == "not ready"


async def test_metrics_move_after_launch_reports_and_a_rejection(env: Env) -> None:
    before = await _scrape(env)
    assert before[("ota_reports_ingested_total", ())] == 0
    assert before[("ota_notices_published_total", ())] == 0
    vins = [vin(1), vin(2)]
    cid = (await launched(env.client, vins))["id"]
    nonces = await env.nonces()
    env.clock.advance(30)  # reports are sent at the fake clock's start minus 12 h: lag is 12 h 30 s
    await env.inject(*(report(cid, v, nonces[v], ReportState.DOWNLOADING) for v in vins))
    await env.inject((topics.status_topic(vins[0]), b"{not json"))

    after = await _scrape(env)
    assert after[("ota_notices_published_total", ())] == 2
    assert after[("ota_reports_ingested_total", ())] == 2
    assert after[("ota_messages_rejected_total", (("reason", "malformed"),))] == 1
    assert after[("ota_campaign_vehicles", (("campaign_id", str(cid)), ("state", "downloading")))] == 2
    assert after[("ota_ingest_lag_seconds_count", ())] == 2
    assert after[("ota_ingest_lag_seconds_sum", ())] == 2 * (12 * 3600 + 30)
    launch = ("POST", "/api/v1/recalls/{recall_id}/launch", "201")
    counts = {
        (labels["method"], labels["route"], labels["status"]): value
        for (name, pairs), value in after.items()
        if name == "ota_http_request_duration_seconds_count"
        for labels in [dict(pairs)]
    }
    assert counts[launch] == 1  # the route template, never the raw path
    assert counts[("GET", "/metrics", "200")] == 1  # the first scrape; this one is still running
    assert not any(route.startswith("/api/v1/recalls/1") for _, route, _ in counts)


async def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path / "a")) as a, running(make_settings(tmp_path / "b")) as b:
        await a.client.get("/healthz")
        assert a.app.state.metrics.registry is not b.app.state.metrics.registry
        a_samples, b_samples = await _scrape(a), await _scrape(b)
    healthz = ("ota_http_request_duration_seconds_count", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
    assert a_samples[healthz] == 1
    assert healthz not in b_samples


def test_json_log_line_shape() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ota_server.test_json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.warning("rejected report from %s", "1HG", extra={"campaign_id": 7, "vin": "1HG"})
        logger.info("plain")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"time", "level", "logger", "message", "campaign_id", "vin"}
    assert first["level"] == "WARNING" and first["logger"] == "ota_server.test_json"
    assert first["message"] == "rejected report from 1HG"
    assert (first["campaign_id"], first["vin"]) == (7, "1HG")
    assert set(second) == {"time", "level", "logger", "message"}


def test_log_format_is_read_from_the_environment() -> None:
    assert Settings.from_env({"OTA_LOG_FORMAT": "json"}).log_format == "json"
    assert Settings.from_env({}).log_format == "text"


async def test_shutdown_stores_reports_still_queued(settings: Settings) -> None:
    v = vin(1)
    async with running(settings) as env:
        cid = (await launched(env.client, [v]))["id"]
        nonce = (await env.nonces())[v]
        env.runtime.ingestor.submit(*report(cid, v, nonce, ReportState.INSTALLING))  # not flushed
        runtime = runtime_of(env.app)
    # the lifespan has ended: the queued report was stored before the engine closed
    assert runtime.ingestor.stats().accepted == 1


async def test_time_in_the_garbage_collector_is_exported(env: Env) -> None:
    import gc

    before = await _scrape(env)
    gc.collect()  # a full collection in this (the server's) process
    after = await _scrape(env)
    key = ("ota_gc_seconds_total", (("generation", "2"),))
    assert key in before and after[key] > before[key]
