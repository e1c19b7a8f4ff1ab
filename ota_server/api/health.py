"""Liveness, readiness, Prometheus metrics and ingest counters."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from ota_server.api.auth import needs_read
from ota_server.api.deps import RuntimeDep
from ota_server.runtime import Runtime
from ota_server.schemas import IngestStats

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database_answers(runtime: Runtime) -> bool:
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:  # any failure to answer means not ready
        return False
    return True


def _mqtt_connected(runtime: Runtime) -> bool:
    if runtime.link is not None:
        return runtime.link.connected
    # An injected publisher (tests, embedding): ready unless it says otherwise.
    return bool(getattr(runtime.dispatcher.publisher, "connected", True))


@router.get("/readyz", responses={503: {"description": "Not ready: the body names what is not"}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """200 once the database answers and the MQTT link is connected; 503 naming what is not ready."""
    checks = {
        "database": await asyncio.to_thread(_database_answers, runtime),
        "mqtt": _mqtt_connected(runtime),
    }
    not_ready = sorted(name for name, ok in checks.items() if not ok)
    body = {"status": "not ready" if not_ready else "ready", "checks": checks, "not_ready": not_ready}
    return JSONResponse(body, status_code=503 if not_ready else 200)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (the campaign-state gauge is one GROUP BY query per scrape)."""
    output = await asyncio.to_thread(generate_latest, request.app.state.metrics.registry)
    return Response(output, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/stats/ingest", dependencies=[needs_read])
def ingest_stats(runtime: RuntimeDep) -> IngestStats:
    return runtime.ingestor.stats()
