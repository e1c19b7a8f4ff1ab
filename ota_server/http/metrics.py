"""Prometheus metrics: one registry per app, so tests can build several apps side by side.

Most values are read at scrape time from what the server already keeps (the
ingest counters, the notice dispatcher's count, one GROUP BY over the campaign
vehicles); only ingest lag and HTTP latency are observed as they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ota_server.db.models import CampaignVehicle, Discrepancy
from ota_server.infra import gctime
from ota_server.runtime import Runtime

LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)
UNMATCHED = "unmatched"  # requests no route matched: one label value, not one per URL


class Metrics:
    """The metrics one app exposes on ``/metrics``."""

    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ingest_lag = Histogram(
            "ota_ingest_lag_seconds",
            "Seconds between a status report's sent_at and the commit that stored it.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "ota_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.registry.register(_RuntimeCollector(runtime))
        self.registry.register(_GcCollector(gctime.process_timer()))

    def observe_lags(self, lags: Sequence[float]) -> None:
        for lag in lags:
            self.ingest_lag.observe(max(lag, 0.0))


class _GcCollector(Collector):
    """Seconds in the cyclic garbage collector, per generation, since this process started timing."""

    def __init__(self, timer: gctime.GcTimer) -> None:
        self._timer = timer

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        seconds = CounterMetricFamily(
            "ota_gc_seconds", "Seconds spent in Python's cyclic garbage collector.", labels=["generation"]
        )
        for generation, value in enumerate(self._timer.seconds):
            seconds.add_metric([str(generation)], value)
        yield seconds


class _RuntimeCollector(Collector):
    """Values computed on scrape from the running server (nothing before its lifespan starts)."""

    def __init__(self, runtime: Callable[[], Runtime | None]) -> None:
        self._runtime = runtime

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known on collect; keeps registration free of DB access

    def collect(self) -> Iterable[Metric]:
        runtime = self._runtime()
        if runtime is None:
            return
        stats = runtime.ingestor.stats()
        ingested = CounterMetricFamily("ota_reports_ingested", "Status reports stored (duplicates excluded).")
        ingested.add_metric([], stats.accepted)
        yield ingested
        duplicates = CounterMetricFamily("ota_reports_duplicate", "Status reports dropped as duplicates.")
        duplicates.add_metric([], stats.duplicates)
        yield duplicates
        rejected = CounterMetricFamily("ota_messages_rejected", "MQTT messages rejected, by reason.", labels=["reason"])
        for reason, count in sorted(stats.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        junk = CounterMetricFamily(
            "ota_messages_junk", "MQTT messages that were not a car's genuine report (any reason; never a car's flood)."
        )
        junk.add_metric([], stats.junk)
        yield junk
        manifests = CounterMetricFamily("ota_manifests_accepted", "Version manifests accepted from cars.")
        manifests.add_metric([], stats.manifests)
        yield manifests
        notices = CounterMetricFamily("ota_notices_published", "Campaign notices and withdrawals published.")
        notices.add_metric([], runtime.dispatcher.published)
        yield notices
        preparations = runtime.rollout.preparations
        prepared = CounterMetricFamily(
            "ota_launch_preparations", "Safety recall launch requests whose chains were signed ahead (finished)."
        )
        prepared.add_metric([], preparations.finished)
        yield prepared
        ahead = GaugeMetricFamily(
            "ota_director_chains_ahead", "Director chains signed ahead, kept in memory for a launch to approve."
        )
        ahead.add_metric([], len(runtime.director.prepared))
        yield ahead
        states = GaugeMetricFamily(
            "ota_campaign_vehicles", "Cars per campaign and per-VIN state.", labels=["campaign_id", "state"]
        )
        with runtime.sessions() as session:
            rows = session.execute(
                select(CampaignVehicle.campaign_id, CampaignVehicle.state, func.count()).group_by(
                    CampaignVehicle.campaign_id, CampaignVehicle.state
                )
            ).all()
            found = session.execute(select(Discrepancy.kind, func.count()).group_by(Discrepancy.kind)).all()
        for campaign_id, state, count in rows:
            states.add_metric([str(campaign_id), state], count)
        yield states
        discrepancies = GaugeMetricFamily(
            "ota_discrepancies",
            "Discrepancies between cars' version manifests and the record (tampering, workshop flashes), by kind.",
            labels=["kind"],
        )
        for kind, count in found:
            discrepancies.add_metric([kind], count)
        yield discrepancies


class HttpMetrics:
    """ASGI middleware timing each HTTP request, labelled by route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            self.metrics.http_latency.labels(route, scope.get("method", ""), str(status)).observe(
                time.perf_counter() - start
            )
