"""The application factory: routes, error mapping and a lifespan owning every resource.

Nothing is built at import time; ``create_app`` only wires things, and the
lifespan opens the database, keys, ingest worker and MQTT link, then closes
them in reverse order (flushing ingest) on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ota_server import web
from ota_server.api import (
    audit,
    campaigns,
    discrepancies,
    groups,
    handlers,
    health,
    openapi,
    owner_notifications,
    recalls,
    regulator,
    releases,
    repo,
    targets,
    tokens,
    vehicles,
    webhooks,
)
from ota_server.api.limits import BodyLimit, UploadLimit
from ota_server.clock import Clock, utc_now
from ota_server.config import Settings
from ota_server.http.bundle_redirect import BundleRedirect
from ota_server.http.metrics import HttpMetrics, Metrics
from ota_server.http.repo import RepoHttp
from ota_server.infra.ratelimit import TokenBuckets
from ota_server.mqtt.publisher import Publisher
from ota_server.runtime import Runtime, start_runtime, stop_runtime
from ota_server.services.bootstrap import ensure_admin_token
from ota_server.services.repository import RepoReader

log = logging.getLogger(__name__)

UPLOAD_PATH = "/api/v1/releases"


def create_app(settings: Settings, *, publisher: Publisher | None = None, clock: Clock = utc_now) -> FastAPI:
    """Build the app. Without ``publisher`` it connects to ``settings.mqtt_url`` itself.

    Tests pass a :class:`ota_server.mqtt.publisher.FakePublisher` and an injected clock,
    then feed reports through ``runtime_of(app).ingestor.submit``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await start_runtime(settings, clock, publisher)
        app.state.runtime = runtime
        runtime.ingestor.on_lags = metrics.observe_lags
        await asyncio.to_thread(ensure_admin_token, runtime.sessions, settings.admin_token_file, clock)
        try:
            yield
        finally:
            await stop_runtime(runtime)

    app = FastAPI(
        title="OTA recall service",
        version="1",
        summary="File a recall, sign the fix, notify the cars, watch them get remedied.",
        lifespan=lifespan,
    )
    metrics = Metrics(lambda: getattr(app.state, "runtime", None))  # per app: tests build several
    app.state.metrics = metrics
    handlers.install(app)
    for module in (
        health,
        vehicles,
        targets,
        releases,
        recalls,
        campaigns,
        repo,
        tokens,
        audit,
        regulator,
        discrepancies,
        owner_notifications,
        groups,
        webhooks,
    ):
        app.include_router(module.router)
    web.install(app, settings, clock)  # the dashboard, the VIN timeline and the public look-up
    openapi.install(app)  # error bodies, codes and links in the schema (after every route is in)
    app.state.rate_limiter = TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst, clock)
    app.add_middleware(UploadLimit, path=UPLOAD_PATH, max_bytes=settings.max_upload_bytes)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=frozenset({UPLOAD_PATH}))
    app.add_middleware(HttpMetrics, metrics=metrics)  # times every API request, rejected ones too
    # outermost: what the cars fetch skips the API stack (see repo_http.py)
    app.add_middleware(RepoHttp, reader_of=lambda: _reader(app), metrics=metrics)
    # bundles from an object store when OTA_BUNDLE_URL_PREFIX is set (see bundle_redirect.py)
    app.add_middleware(BundleRedirect, prefix=settings.bundle_url_prefix, runtime_of=lambda: _runtime(app))
    return app


def _runtime(app: FastAPI) -> Runtime | None:
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    return runtime


def _reader(app: FastAPI) -> RepoReader | None:
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    return runtime.repo_reader if runtime is not None else None


def runtime_of(app: FastAPI) -> Runtime:
    """The running server's resources (only inside the lifespan)."""
    runtime: Runtime = app.state.runtime
    return runtime
