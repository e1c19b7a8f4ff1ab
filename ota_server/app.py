"""The application factory: routes, error mapping and a lifespan owning every resource.

Nothing is built at import time; ``create_app`` only wires things, and the
lifespan opens the database, keys, ingest worker and MQTT link, then closes
them in reverse order (flushing ingest) on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ota_server.api import campaigns, handlers, health, recalls, releases, repo, vehicles
from ota_server.api.limits import UploadLimit
from ota_server.clock import Clock, utc_now
from ota_server.config import Settings
from ota_server.publisher import Publisher
from ota_server.runtime import Runtime, start_runtime, stop_runtime

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, publisher: Publisher | None = None, clock: Clock = utc_now) -> FastAPI:
    """Build the app. Without ``publisher`` it connects to ``settings.mqtt_url`` itself.

    Tests pass a :class:`ota_server.publisher.FakePublisher` and an injected clock,
    then feed reports through ``runtime_of(app).ingestor.submit``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await start_runtime(settings, clock, publisher)
        app.state.runtime = runtime
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
    handlers.install(app)
    for module in (health, vehicles, releases, recalls, campaigns, repo):
        app.include_router(module.router)
    app.add_middleware(UploadLimit, path="/api/v1/releases", max_bytes=settings.max_upload_bytes)
    return app


def runtime_of(app: FastAPI) -> Runtime:
    """The running server's resources (only inside the lifespan)."""
    runtime: Runtime = app.state.runtime
    return runtime
