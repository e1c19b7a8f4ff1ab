"""The TUF repositories over HTTP, laid out as ``firmware_bundles.repo_paths`` says."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from firmware_bundles import repo_paths
from ota_server.api.deps import RuntimeDep, SessionDep
from ota_server.services import releases, repository

router = APIRouter(prefix="/repo", tags=["repository"])

_NO_CACHE = {"Cache-Control": "no-cache"}


def _json(data: bytes) -> Response:
    return Response(content=data, media_type="application/json", headers=_NO_CACHE)


@router.get("/" + repo_paths.IMAGE_METADATA + "{name}")
def image_metadata(name: str, session: SessionDep) -> Response:
    return _json(repository.image_metadata(session, name))


@router.get("/" + repo_paths.TARGETS + "{target_path:path}")
def image_target(target_path: str, session: SessionDep, runtime: RuntimeDep) -> FileResponse:
    path = releases.bundle_path(session, runtime.bundles, target_path)
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/" + repo_paths.DIRECTOR_METADATA + "{name}")
def director_metadata(vin: str, name: str, session: SessionDep, runtime: RuntimeDep) -> Response:
    if name == "timestamp.json":
        repository.refresh_director(session, runtime.director, vin, runtime.clock())
    return _json(repository.director_metadata(session, vin, name))
