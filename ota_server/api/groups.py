"""Vehicle tags and saved groups (named filters over the fleet, counted when read)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import AfterValidator

from ota_server.api.auth import OperatorSession, actor_of, needs_read, trail_of
from ota_server.api.deps import RuntimeDep, SessionDep, VinPath
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.api.openapi import errors
from ota_server.schemas import (
    GroupCreate,
    GroupPage,
    GroupPublic,
    TagBatch,
    TagBatchResult,
    VehiclePage,
    VehiclePublic,
)
from ota_server.schemas.groups import GROUP_NAME_PATTERN, TAG_PATTERN, TAG_RULE, group_name_shape, tag_shape
from ota_server.services import groups
from ota_server.services import vehicles as fleet

router = APIRouter()

TagPath = Annotated[
    str, Path(description=TAG_RULE, json_schema_extra={"pattern": TAG_PATTERN}), AfterValidator(tag_shape)
]
GroupRef = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        description="The group's id or its name (any case)",
        json_schema_extra={"pattern": GROUP_NAME_PATTERN},
    ),
    AfterValidator(group_name_shape),
]


@router.put("/api/v1/vehicles/{vin}/tags/{tag}", tags=["vehicles"])
def tag_vehicle(vin: VinPath, tag: TagPath, session: OperatorSession, runtime: RuntimeDep) -> VehiclePublic:
    """Put a tag on the car (stored in lower case); a tag it has already is kept. At most 32 tags a car."""
    return groups.tag(session, vin, tag, actor_of(session).name, runtime.clock())


@router.delete("/api/v1/vehicles/{vin}/tags/{tag}", tags=["vehicles"])
def untag_vehicle(vin: VinPath, tag: TagPath, session: OperatorSession) -> VehiclePublic:
    """Take a tag off the car (404 when it does not carry it)."""
    return groups.untag(session, vin, tag)


@router.post("/api/v1/vehicle-tags", tags=["vehicles"], responses=errors(404))
def tag_vehicles(body: TagBatch, session: OperatorSession, runtime: RuntimeDep) -> TagBatchResult:
    """Put one tag on up to 1000 cars; all or nothing (an unknown VIN is a 404, a car with 32 tags a 422)."""
    trail_of(session).action.target.update(tag=body.tag, vins=str(len(body.vins)))
    return groups.tag_many(session, body, actor_of(session).name, runtime.clock())


@router.post("/api/v1/vehicle-tags/remove", tags=["vehicles"], responses=errors(404))
def untag_vehicles(body: TagBatch, session: OperatorSession) -> TagBatchResult:
    """Take one tag off up to 1000 cars; all or nothing (an unknown VIN is a 404)."""
    trail_of(session).action.target.update(tag=body.tag, vins=str(len(body.vins)))
    return groups.untag_many(session, body)


@router.post("/api/v1/groups", status_code=status.HTTP_201_CREATED, tags=["groups"], responses=errors(409))
def create_group(body: GroupCreate, session: OperatorSession, runtime: RuntimeDep) -> GroupPublic:
    """Save a named filter over the fleet; its cars are counted whenever it is read.

    A recall's population may name it (population.group): the recall keeps a copy of the filter as
    it is at filing, so a group deleted or saved again later does not change a filed recall.
    """
    trail_of(session).action.target["name"] = body.name
    return groups.create(session, body, actor_of(session).name, runtime.clock())


@router.get("/api/v1/groups", dependencies=[needs_read], tags=["groups"], responses=CSV_RESPONSES)
@exportable("groups.csv")
def list_groups(
    session: SessionDep,
    sort: Annotated[str | None, sort_query(groups.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> GroupPage:
    """The saved groups, by name (any case) unless sorted otherwise, each with its count now."""
    return groups.page(session, sort, cursor, limit)


@router.get("/api/v1/groups/{group}", dependencies=[needs_read], tags=["groups"])
def get_group(group: GroupRef, session: SessionDep) -> GroupPublic:
    return groups.get(session, group)


@router.get("/api/v1/groups/{group}/vehicles", dependencies=[needs_read], tags=["groups"], responses=CSV_RESPONSES)
@exportable("group-{group}-vehicles.csv")
def group_vehicles(
    group: GroupRef,
    session: SessionDep,
    sort: Annotated[str | None, sort_query(fleet.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> VehiclePage:
    """The group's cars now, by VIN unless sorted otherwise (the fleet list's sort keys), a page at a time."""
    return groups.vehicles(session, group, sort, cursor, limit)


@router.delete("/api/v1/groups/{group}", tags=["groups"])
def delete_group(group: GroupRef, session: OperatorSession) -> GroupPublic:
    """Delete a saved group. Recalls that named it keep the copy of its filter they took at filing."""
    return groups.remove(session, group)
