"""The TUF repositories over HTTP, laid out as ``firmware_bundles.repo_paths`` says.

In a running server ``ota_server/http/repo.py`` answers these paths before the API stack;
these routes give them their OpenAPI entries and serve the same reader's answers to
anything that reaches the app directly.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from firmware_bundles import repo_paths
from ota_server.api.deps import RuntimeDep
from ota_server.api.openapi import errors
from ota_server.errors import NotFound
from ota_server.services.repository import unservable

router = APIRouter(prefix="/repo", tags=["repository"])

_NO_CACHE = {"Cache-Control": "no-cache"}


def _json(data: bytes) -> Response:
    return Response(content=data, media_type="application/json", headers=_NO_CACHE)


def _servable(*parts: str) -> None:
    """The same 404 as ``repo_http`` for a path no file can have (a control character)."""
    for part in parts:
        if (problem := unservable(part)) is not None:
            raise NotFound(problem)


@router.get("/" + repo_paths.IMAGE_METADATA + "{name}", responses=errors(503))
def image_metadata(name: str, runtime: RuntimeDep) -> Response:
    _servable(name)
    return _json(runtime.repo_reader.image(name))


@router.get("/" + repo_paths.TARGETS + "{target_path:path}", responses=errors(503))
def image_target(target_path: str, runtime: RuntimeDep) -> FileResponse:
    _servable(target_path)
    return FileResponse(runtime.repo_reader.target(target_path), media_type="application/octet-stream")


@router.get("/" + repo_paths.DIRECTOR_METADATA + "{name}", responses=errors(503))
def director_metadata(vin: str, name: str, runtime: RuntimeDep) -> Response:
    _servable(vin, name)
    return _json(runtime.repo_reader.director(vin, name))
