"""Fleet registration and per-vehicle views."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from ota_server.api.auth import OperatorSession, needs_operator, needs_read
from ota_server.api.deps import RuntimeDep, SessionDep, VinPath
from ota_server.api.openapi import errors
from ota_server.runtime import Runtime
from ota_server.schemas import (
    AgentConfig,
    BatchCreated,
    CertificateRenewal,
    CertificatesRevoked,
    ProvisionBatch,
    ProvisionedBatch,
    RenewedCertificate,
    VehicleBatchCreate,
    VehicleCreate,
    VehicleIdentity,
    VehiclePublic,
    VehicleStatus,
)
from ota_server.services import identity, vehicles

router = APIRouter(prefix="/api/v1/vehicles", tags=["vehicles"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(409))
def register_vehicle(body: VehicleCreate, session: OperatorSession, runtime: RuntimeDep) -> VehiclePublic:
    """Register one car; a dynamic campaign whose population it matches takes it at the next tick."""
    stored = vehicles.register_one(session, body, runtime.clock())
    runtime.scheduler.poke()
    return stored


@router.post("/batch", status_code=status.HTTP_201_CREATED, responses=errors(409))
def register_batch(body: VehicleBatchCreate, session: OperatorSession, runtime: RuntimeDep) -> BatchCreated:
    """All or nothing: one bad car rejects the batch (422 names its index and VIN)."""
    created = BatchCreated(created=vehicles.register(session, body.vehicles, runtime.clock()))
    runtime.scheduler.poke()
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
