"""Fleet registration and per-vehicle views."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from pydantic import AfterValidator

from ota_server.api.auth import OperatorSession, actor_of, needs_operator, needs_read, trail_of
from ota_server.api.deps import Instant, RuntimeDep, SessionDep, VinPath
from ota_server.api.listing import CSV_RESPONSES, Cursor, Limit, exportable, sort_query
from ota_server.api.openapi import errors
from ota_server.domain.states import StateWord
from ota_server.runtime import Runtime
from ota_server.schemas import (
    AgentConfig,
    BatchCreated,
    CertificateRenewal,
    CertificatesRevoked,
    DiscrepancyKind,
    ProvisionBatch,
    ProvisionedBatch,
    RenewedCertificate,
    Text,
    VehicleBatchCreate,
    VehicleCreate,
    VehicleDecommission,
    VehicleDecommissioned,
    VehicleIdentity,
    VehiclePage,
    VehiclePublic,
    VehicleStatus,
    VehicleUpdate,
)
from ota_server.schemas.groups import TAG_PATTERN, TAG_RULE, tag_shape
from ota_server.services import identity, vehicles

router = APIRouter(prefix="/api/v1/vehicles", tags=["vehicles"])


DiscrepancyFilter = Literal["any", DiscrepancyKind]


@router.get("", dependencies=[needs_read], responses={**CSV_RESPONSES, **errors(404)})
@exportable("vehicles.csv")
def list_vehicles(
    session: SessionDep,
    model: Annotated[Text | None, Query(min_length=1, max_length=64)] = None,
    model_year: Annotated[int | None, Query(ge=1980, le=2100)] = None,
    hardware_id: Annotated[
        Text | None, Query(min_length=1, max_length=64, description="An ECU of this hardware")
    ] = None,
    installed_version: Annotated[
        Text | None,
        Query(min_length=1, max_length=64, description="An ECU runs this version (with hardware_id: that ECU)"),
    ] = None,
    recall: Annotated[
        Text | None,
        Query(
            min_length=1,
            max_length=16,
            description="A recall's id or campaign number: its campaign's cars, or its population before launch",
        ),
    ] = None,
    campaign: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Cars in this campaign")] = None,
    state: Annotated[
        StateWord | None,
        Query(
            description="The car's state in the campaign (or the recall's, or any campaign); errors: failed, "
            "rolled_back or timed_out"
        ),
    ] = None,
    not_seen_since: Annotated[
        Instant | None, Query(description="Silent since then: last seen before it, or never (no zone: UTC)")
    ] = None,
    decommissioned: Annotated[bool | None, Query(description="Only cars out of (true) or in (false) the fleet")] = None,
    discrepancy: Annotated[
        DiscrepancyFilter | None, Query(description="Cars with a discrepancy on record (any, or of this kind)")
    ] = None,
    tag: Annotated[
        str | None,
        Query(description="Cars carrying this tag: " + TAG_RULE, json_schema_extra={"pattern": TAG_PATTERN}),
        AfterValidator(tag_shape),
    ] = None,
    sort: Annotated[str | None, sort_query(vehicles.LISTING)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> VehiclePage:
    """The fleet, by VIN unless sorted otherwise, a page at a time; every filter given must hold."""
    spec = vehicles.FleetFilter(
        model=model,
        model_year=model_year,
        hardware_id=hardware_id,
        installed_version=installed_version,
        recall=recall,
        campaign=campaign,
        state=state,
        not_seen_since=not_seen_since,
        decommissioned=decommissioned,
        discrepancy=discrepancy,
        tag=tag,
    )
    return vehicles.page(session, spec, sort, cursor, limit)


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(409))
def register_vehicle(body: VehicleCreate, session: OperatorSession, runtime: RuntimeDep) -> VehiclePublic:
    """Register one car; a dynamic campaign whose population it matches takes it at the next tick."""
    stored = vehicles.register_one(session, body, runtime.clock())
    runtime.rollout.fleet_changed()
    return stored


@router.post("/batch", status_code=status.HTTP_201_CREATED, responses=errors(409))
def register_batch(body: VehicleBatchCreate, session: OperatorSession, runtime: RuntimeDep) -> BatchCreated:
    """All or nothing: one bad car rejects the batch (422 names its index and VIN)."""
    created = BatchCreated(created=vehicles.register(session, body.vehicles, runtime.clock()))
    runtime.rollout.fleet_changed()
    return created


CertificateQuery = Annotated[
    bool, Query(description="Also issue an MQTT client certificate (needed only for a TLS broker)")
]


def _provision(session: SessionDep, runtime: Runtime, vins: list[str], certificate: bool) -> list[VehicleIdentity]:
    now = runtime.clock()
    ca = runtime.pki.get(now) if certificate else None
    return identity.provision(session, vins, now, ca, _revocations(runtime))


def _revocations(runtime: Runtime) -> identity.Revocations:
    return identity.Revocations(runtime.settings.crl_file, runtime.pki.get)


@router.post("/provision", responses=errors(404))
def provision_batch(
    body: ProvisionBatch, session: OperatorSession, runtime: RuntimeDep, certificate: CertificateQuery = True
) -> ProvisionedBatch:
    """Issue (or replace) the identity of many cars at once; the private keys are returned only here."""
    return ProvisionedBatch(identities=_provision(session, runtime, body.vins, certificate))


@router.post("/{vin}/provision")
def provision_vehicle(
    vin: VinPath, session: OperatorSession, runtime: RuntimeDep, certificate: CertificateQuery = True
) -> VehicleIdentity:
    """Issue (or replace) one car's report key and client certificate, with its agent config.

    The private key is in this answer only; the old key, if any, is rejected from now on.
    """
    (issued,) = _provision(session, runtime, [vin], certificate)
    issued.agent_config = get_agent_config(issued.vin, session, runtime)
    return issued


@router.post("/{vin}/certificate/revoke")
def revoke_certificate(vin: VinPath, session: OperatorSession, runtime: RuntimeDep) -> CertificatesRevoked:
    """Revoke the car's client certificate (stolen, retired) and rewrite the broker's CRL.

    The broker refuses it once it has read the new list (SIGHUP or restart, see README);
    provisioning the car again gives it a new one.
    """
    return identity.revoke(session, vin, runtime.clock(), _revocations(runtime))


@router.post("/{vin}/certificate/renew")
def renew_certificate(
    vin: VinPath, body: CertificateRenewal, session: SessionDep, runtime: RuntimeDep
) -> RenewedCertificate:
    """The car itself, before its certificate expires: a new certificate for a new key.

    No API token: the request is signed by the current certificate's key, which the
    server checks against the certificate it last issued to this VIN. The old one is
    revoked once the new one is issued.
    """
    return identity.renew(session, vin, body, runtime.clock(), _revocations(runtime))


@router.get("/{vin}", dependencies=[needs_read])
def get_vehicle(vin: VinPath, session: SessionDep) -> VehiclePublic:
    return vehicles.get(session, vin)


@router.patch("/{vin}")
def update_vehicle(vin: VinPath, body: VehicleUpdate, session: OperatorSession, runtime: RuntimeDep) -> VehiclePublic:
    """Change the car's time zone, market or owner contact (null clears one) or correct its model year
    (a dynamic campaign whose population it now matches takes it at the next tick); any other field is refused."""
    trail_of(session).action.target["changed"] = ",".join(sorted(body.model_fields_set))
    updated = vehicles.update(session, vin, body)
    if body.model_fields_set & vehicles.POPULATION_FIELDS:
        runtime.rollout.fleet_changed()
    return updated


@router.post("/{vin}/decommission", responses=errors(409))
async def decommission_vehicle(
    vin: VinPath, body: VehicleDecommission, session: OperatorSession, runtime: RuntimeDep
) -> VehicleDecommissioned:
    """The car left the fleet (exported, scrapped, stolen, other): no future population takes it, and in
    every open campaign it is recorded unreachable with this reason (a notified car is sent a withdrawal).
    Refused (409) while it installs somewhere, and when it was decommissioned already."""
    trail_of(session).action.target["reason"] = body.reason.value
    return await runtime.rollout.decommission(session, vin, body, actor_of(session).name)


@router.get("/{vin}/status", dependencies=[needs_read])
def get_status(vin: VinPath, session: SessionDep) -> VehicleStatus:
    return vehicles.status(session, vin)


@router.get("/{vin}/agent-config", dependencies=[needs_operator])
def get_agent_config(vin: VinPath, session: SessionDep, runtime: RuntimeDep) -> AgentConfig:
    """What a car needs to bootstrap: broker, repository URL and the two trusted roots."""
    return vehicles.agent_config(
        session,
        vin,
        mqtt_url=runtime.mqtt_url,
        repo_url=runtime.repo_url,
        image_root=runtime.image_root,
        director_root=runtime.director_root,
    )
