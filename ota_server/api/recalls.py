"""Recalls and their launch into campaigns."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from firmware_bundles.messages import CampaignNotice
from ota_server.api.deps import RuntimeDep, SessionDep
from ota_server.schemas import CampaignPublic, RecallCreate, RecallPublic
from ota_server.services import campaigns, recalls

router = APIRouter(prefix="/api/v1/recalls", tags=["recalls"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_recall(body: RecallCreate, session: SessionDep, runtime: RuntimeDep) -> RecallPublic:
    return recalls.create(session, body, runtime.clock())


@router.get("")
def list_recalls(session: SessionDep) -> list[RecallPublic]:
    return recalls.list_all(session)


@router.get("/{recall_id}")
def get_recall(recall_id: int, session: SessionDep) -> RecallPublic:
    return recalls.get(session, recall_id)


@router.post("/{recall_id}/launch", status_code=status.HTTP_201_CREATED)
async def launch_recall(recall_id: int, runtime: RuntimeDep) -> CampaignPublic:
    """Freeze the population and sign per-VIN metadata, then publish notices in the background."""

    def launch() -> tuple[CampaignPublic, list[CampaignNotice]]:
        with runtime.sessions() as session:
            return campaigns.launch(
                session, runtime.director, recall_id, repo_url=runtime.repo_url, now=runtime.clock()
            )

    campaign, notices = await run_in_threadpool(launch)
    runtime.dispatcher.dispatch(notices)
    return campaign
