"""Release upload and listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile, status

from ota_server.api.auth import OperatorSession, actor_of, needs_read, trail_of
from ota_server.api.deps import Id, RuntimeDep, SessionDep
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.api.openapi import errors
from ota_server.schemas import ReleasePublic, Text
from ota_server.schemas.listing import Page
from ota_server.schemas.recalls import ReleaseRetire
from ota_server.services import releases
from ota_server.services.deltas import DeltaPolicy

router = APIRouter(prefix="/api/v1/releases", tags=["releases"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(409))
def upload_release(
    file: Annotated[UploadFile, File(description="The bundle (firmware_bundles.bundle format)")],
    hardware_id: Annotated[Text, Form(max_length=64)],
    version: Annotated[Text, Form(max_length=64)],
    release_counter: Annotated[int, Form(ge=0, le=2**31 - 1)],
    session: OperatorSession,
    runtime: RuntimeDep,
    rxswin: Annotated[
        Text | None,
        Form(
            min_length=1, max_length=64, description="The RXSWIN (UNECE R156) a car carries once it runs this release"
        ),
    ] = None,
) -> ReleasePublic:
    return releases.upload(
        session,
        runtime.bundles,
        runtime.image_repo,
        file.file,
        hardware_id=hardware_id,
        version=version,
        release_counter=release_counter,
        rxswin=rxswin,
        now=runtime.clock(),
        delta_policy=DeltaPolicy(
            runtime.settings.delta_max_ratio, runtime.settings.delta_max_image_bytes, runtime.settings.delta_max_bases
        ),
    )


@router.get("", dependencies=[needs_read], responses=CSV_RESPONSES)
@exportable("releases.csv")
def list_releases(
    session: SessionDep,
    hardware_id: Annotated[Text | None, Query(min_length=1, max_length=64, description="For this hardware")] = None,
    retired: Annotated[bool | None, Query(description="Only retired (true) or in-use (false) releases")] = None,
    sort: Annotated[str | None, sort_query(releases.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[ReleasePublic]:
    """Releases, oldest first by default, a page at a time."""
    return releases.page(session, hardware_id, retired, sort, cursor, limit)


@router.post("/{release_id}/retire", responses=errors(404, 409))
def retire_release(release_id: Id, body: ReleaseRetire, session: OperatorSession, runtime: RuntimeDep) -> ReleasePublic:
    """Retire a release: no new recall may name it. Refused (409, naming them) while a recall not yet
    launched or a campaign not finished (active or paused) uses it; the release stays listed and served."""
    trail_of(session).action.target["reason"] = body.reason
    return releases.retire(session, release_id, body.reason, actor_of(session).name, runtime.clock())
