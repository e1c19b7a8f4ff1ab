"""Fleet registration and per-vehicle views."""

from __future__ import annotations

from fastapi import APIRouter, status

from ota_server.api.deps import RuntimeDep, SessionDep
from ota_server.schemas import (
    AgentConfig,
    BatchCreated,
    VehicleBatchCreate,
    VehicleCreate,
    VehiclePublic,
    VehicleStatus,
)
from ota_server.services import vehicles

router = APIRouter(prefix="/api/v1/vehicles", tags=["vehicles"])


@router.post("", status_code=status.HTTP_201_CREATED)
def register_vehicle(body: VehicleCreate, session: SessionDep, runtime: RuntimeDep) -> VehiclePublic:
    vehicles.register(session, [body], runtime.clock(), numbered=False)
    return vehicles.get(session, body.vin)


@router.post("/batch", status_code=status.HTTP_201_CREATED)
def register_batch(body: VehicleBatchCreate, session: SessionDep, runtime: RuntimeDep) -> BatchCreated:
    """All or nothing: one bad car rejects the batch (422 names its index and VIN)."""
    return BatchCreated(created=vehicles.register(session, body.vehicles, runtime.clock()))


@router.get("/{vin}")
def get_vehicle(vin: str, session: SessionDep) -> VehiclePublic:
    return vehicles.get(session, vin)


@router.get("/{vin}/status")
def get_status(vin: str, session: SessionDep) -> VehicleStatus:
    return vehicles.status(session, vin)


@router.get("/{vin}/agent-config")
def get_agent_config(vin: str, session: SessionDep, runtime: RuntimeDep) -> AgentConfig:
    """What a car needs to bootstrap: broker, repository URL and the two trusted roots."""
    return vehicles.agent_config(
        session,
        vin,
        mqtt_url=runtime.mqtt_url,
        repo_url=runtime.repo_url,
        image_root=runtime.image_root,
        director_root=runtime.director_root,
    )
