"""Request and response models (``XCreate`` in, ``XPublic`` out), shared by the API and services.

Field constraints catch shape errors at the edge; rules that need a clear
domain message (VIN check digit, campaign number format, ranges) live in the
services so they speak the same words however they are called.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ota_server.roles import Role

_IN = ConfigDict(extra="forbid")
_OUT = ConfigDict(from_attributes=True)
Text64 = Field(min_length=1, max_length=64)


class EcuCreate(BaseModel):
    model_config = _IN
    serial: str = Text64
    hardware_id: str = Text64
    installed_version: str = Text64
    primary: bool = False


class EcuPublic(BaseModel):
    model_config = _OUT
    serial: str
    hardware_id: str
    installed_version: str
    primary: bool


class VehicleCreate(BaseModel):
    model_config = _IN
    vin: str = Field(max_length=32, description="ISO 3779 VIN; the check digit is enforced where the region uses one")
    make: str | None = Field(default=None, max_length=64)
    model: str = Text64
    model_year: int = Field(ge=1980, le=2100)
    production_date: date
    ecus: list[EcuCreate] = Field(min_length=1, max_length=64)


class VehiclePublic(BaseModel):
    model_config = _OUT
    vin: str
    make: str | None
    model: str
    model_year: int
    production_date: date
    online: bool
    last_seen: datetime | None
    ecus: list[EcuPublic]


class VehicleBatchCreate(BaseModel):
    model_config = _IN
    vehicles: list[VehicleCreate] = Field(min_length=1, max_length=10_000)


class BatchCreated(BaseModel):
    created: int


class HistoryEntry(BaseModel):
    state: str
    reason: str | None
    detail: str | None
    attempt: int
    received_at: datetime


class VehicleCampaignStatus(BaseModel):
    campaign_id: int
    recall_number: str
    state: str
    reason: str | None
    detail: str | None
    updated_at: datetime
    history: list[HistoryEntry]


class VehicleStatus(BaseModel):
    vin: str
    online: bool
    last_seen: datetime | None
    ecus: list[EcuPublic]
    campaigns: list[VehicleCampaignStatus]


class AgentEcu(BaseModel):
    serial: str
    hardware_id: str
    installed_version: str


class AgentConfig(BaseModel):
    """What a car needs to bootstrap: where to connect and which roots to trust."""

    vin: str
    ecus: list[AgentEcu]
    mqtt_url: str
    repo_url: str
    image_root: str = Field(description="The Image repository's 1.root.json, as a JSON string")
    director_root: str = Field(description="The Director's 1.root.json, as a JSON string")


class ReleasePublic(BaseModel):
    model_config = _OUT
    id: int
    hardware_id: str
    version: str
    release_counter: int
    target_path: str
    length: int
    sha256: str
    created_at: datetime


class YearRange(BaseModel):
    model_config = _IN
    min: int | None = Field(default=None, ge=0, le=9999)
    max: int | None = Field(default=None, ge=0, le=9999)


class VinRange(BaseModel):
    model_config = _IN
    first: str = Field(max_length=17)
    last: str = Field(max_length=17)


class DateRange(BaseModel):
    model_config = _IN
    start: date | None = None
    end: date | None = None


class VersionRange(BaseModel):
    model_config = _IN
    min: str | None = Field(default=None, max_length=64)
    max: str | None = Field(default=None, max_length=64)


class Population(BaseModel):
    """Which cars a recall covers; every filter given must match (an AND of filters)."""

    model_config = _IN
    models: list[str] | None = None
    model_years: YearRange | None = None
    vin_range: VinRange | None = None
    production_dates: DateRange | None = None
    hardware_id: str | None = Field(default=None, description="Defaults to the release's hardware id")
    installed_versions: VersionRange | None = Field(
        default=None, description="Inclusive bounds on the ECU's installed version (PEP 440 ordering)"
    )


class RecallCreate(BaseModel):
    model_config = _IN
    campaign_number: str = Field(max_length=32, description="Regulator style, e.g. 24V-123")
    manufacturer_number: str | None = Field(default=None, max_length=64)
    title: str = Field(min_length=1, max_length=200)
    defect: str = Field(min_length=1, max_length=10_000)
    safety_risk: str = Field(min_length=1, max_length=10_000)
    remedy: str = Field(min_length=1, max_length=10_000)
    release_id: int = Field(ge=1, le=2**31 - 1)
    population: Population = Field(default_factory=Population)
    safety_recall: bool = Field(
        default=True, description="A safety recall launches only after a second person approves it"
    )


class RecallPublic(BaseModel):
    id: int
    campaign_number: str
    manufacturer_number: str | None
    title: str
    defect: str
    safety_risk: str
    remedy: str
    release_id: int
    population: Population
    affected_count: int = Field(description="Cars the population matches now (a preview until launch)")
    campaign_id: int | None
    created_at: datetime
    safety_recall: bool = True
    launch_request: LaunchRequestPublic | None = None


class CampaignPublic(BaseModel):
    model_config = _OUT
    id: int
    recall_id: int
    release_id: int
    population: int
    launched_at: datetime


class Progress(BaseModel):
    campaign_id: int
    recall_number: str
    population: int
    counts: dict[str, int]
    failures_by_reason: dict[str, int]
    notices_published: int
    done: bool


class IngestStats(BaseModel):
    accepted: int
    duplicates: int
    rejected: dict[str, int]


class ProvisionBatch(BaseModel):
    model_config = _IN
    vins: list[str] = Field(min_length=1, max_length=10_000)


class VehicleIdentity(BaseModel):
    """A car's identity, handed out once: the server keeps only the public key and the certificate serial.

    ``agent_config`` (single provisioning only) is what ``GET .../agent-config`` returns, so one
    answer is enough to write the car's whole config bundle.
    """

    vin: str
    keyid: str
    report_public_key: dict[str, Any] = Field(description="securesystemslib key dict (ed25519)")
    report_private_key: str = Field(description="PKCS#8 PEM; not kept by the server")
    ca_certificate: str | None = Field(default=None, description="PEM of the CA that signs broker and car")
    client_certificate: str | None = Field(default=None, description="PEM, CN = VIN")
    client_key: str | None = Field(default=None, description="PKCS#8 PEM; not kept by the server")
    agent_config: AgentConfig | None = None


class ProvisionedBatch(BaseModel):
    identities: list[VehicleIdentity]


# --- operators: tokens, launch approval, audit ---------------------------------------


class TokenCreate(BaseModel):
    model_config = _IN
    name: str = Field(min_length=1, max_length=64, description="The person this token belongs to")
    role: Role


class TokenPublic(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str = Field(description="The secret's first characters, to tell tokens apart")
    created_by: str
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret; shown this once, only its sha256 is stored")


class LaunchRequestPublic(BaseModel):
    """A safety recall's launch: requested by one person, launched when another approves."""

    model_config = _OUT
    recall_id: int
    state: str = Field(description="awaiting_approval or approved")
    requested_by: str
    requested_at: datetime
    approved_by: str | None
    approved_at: datetime | None


class AuditEntryPublic(BaseModel):
    model_config = _OUT
    seq: int
    at: datetime
    actor: str
    role: str
    method: str
    route: str
    target: dict[str, Any]
    status: int
    detail: str | None
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    total: int
    offset: int
    entries: list[AuditEntryPublic]


class AuditVerification(BaseModel):
    ok: bool
    entries: int = Field(description="Entries checked and found intact")
    head_hash: str = Field(description="Hash of the last intact entry; keep it elsewhere to anchor the chain")
    first_bad: int | None
    problem: str | None
