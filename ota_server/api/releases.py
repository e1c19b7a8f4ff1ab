"""Release upload and listing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile, status

from ota_server.api.auth import OperatorSession, needs_read
from ota_server.api.deps import RuntimeDep, SessionDep
from ota_server.api.openapi import errors
from ota_server.schemas import ReleasePublic, Text
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


@router.get("", dependencies=[needs_read])
def list_releases(session: SessionDep) -> list[ReleasePublic]:
    return releases.list_all(session)
