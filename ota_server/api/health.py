"""Liveness and ingest counters."""

from __future__ import annotations

from fastapi import APIRouter

from ota_server.api.auth import needs_read
from ota_server.api.deps import RuntimeDep
from ota_server.schemas import IngestStats

router = APIRouter()


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/api/v1/stats/ingest", dependencies=[needs_read])
def ingest_stats(runtime: RuntimeDep) -> IngestStats:
    return runtime.ingestor.stats()
