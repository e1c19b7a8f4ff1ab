"""Offline targets signing: fetch the pending Image targets payload, post its signatures.

``ota releases sign`` uses both. The payload is never served under ``/repo``: cars
see a release only once a threshold of targets keys has signed it.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ota_server.api.auth import OperatorSession, needs_read
from ota_server.api.deps import RuntimeDep, SessionDep
from ota_server.api.openapi import errors
from ota_server.schemas import TargetsPublished, TargetsSignatures

router = APIRouter(prefix="/api/v1/releases/pending-targets", tags=["releases"])


@router.get(
    "",
    dependencies=[needs_read],
    responses={
        200: {"content": {"application/json": {}}, "description": "The unsigned targets metadata"},
        **errors(404),
    },
)
def pending_targets(session: SessionDep, runtime: RuntimeDep) -> Response:
    """The next Image targets metadata, unsigned, exactly as it must be signed (404: nothing waits)."""
    data = runtime.image_repo.pending(session)
    return Response(content=data, media_type="application/json", headers={"Cache-Control": "no-store"})


@router.post("/signatures", responses=errors(404, 409))
def sign_pending_targets(body: TargetsSignatures, session: OperatorSession, runtime: RuntimeDep) -> TargetsPublished:
    """Publish the pending targets once the signatures meet the root's targets threshold."""
    signatures = {s.keyid: s.sig for s in body.signatures}
    with runtime.image_repo.lock:
        published = runtime.image_repo.accept_signatures(session, body.payload_sha256, signatures, runtime.clock())
        session.commit()
    return TargetsPublished(targets_version=published.targets_version, release_ids=published.release_ids)
