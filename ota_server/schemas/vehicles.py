"""Vehicles, their ECUs, discrepancies, status and timeline, provisioning and certificates."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from ota_server.domain.rollout_plan import TimeZone
from ota_server.domain.states import UnreachableReason
from ota_server.schemas.common import INPUT_MODEL, OUTPUT_MODEL, ProductionDate, Text, Text64, Vin


class EcuCreate(BaseModel):
    model_config = INPUT_MODEL
    serial: Text = Text64
    hardware_id: Text = Text64
    installed_version: Text = Text64
    primary: bool = False


class EcuPublic(BaseModel):
    model_config = OUTPUT_MODEL
    serial: str
    hardware_id: str
    installed_version: str = Field(
        description="The car's last signed word (its version manifest); the declared version until the first one"
    )
    primary: bool
    declared_version: str | None = Field(default=None, description="What registration declared")
    installed_sha256: str | None = Field(
        default=None, description="The image in the active slot, as the car hashed it (null until a manifest)"
    )
    reported_at: datetime | None = Field(
        default=None, description="When the server received the manifest that says so (null: declared only)"
    )
    source: Literal["declared", "reported"] = Field(
        default="declared", description="reported once a signed manifest spoke for this ECU"
    )


# What a car's manifest can disagree with: an image no release has (unassigned_image), a version no
# release of its hardware names (unknown_version), a remedied campaign car running another version
# (remedied_mismatch), other hardware (hardware_mismatch), an ECU not registered (unknown_ecu), or a
# version's image that changed with no install behind it (image_changed).
DiscrepancyKind = Literal[
    "unassigned_image", "unknown_version", "remedied_mismatch", "hardware_mismatch", "unknown_ecu", "image_changed"
]


class DiscrepancyPublic(BaseModel):
    """Where a car's signed manifest and the service's record disagree."""

    model_config = OUTPUT_MODEL
    id: int
    vin: str
    ecu_serial: str
    hardware_id: str
    kind: DiscrepancyKind
    version: str
    image_sha256: str | None
    campaign_id: int | None
    detail: str
    manifest_counter: int
    found_at: datetime
    last_seen_at: datetime


class VehicleCreate(BaseModel):
    model_config = INPUT_MODEL
    vin: Vin
    make: Text | None = Field(default=None, max_length=64)
    model: Text = Text64
    model_year: int = Field(ge=1980, le=2100)
    production_date: ProductionDate
    ecus: list[EcuCreate] = Field(min_length=1, max_length=64)
    time_zone: TimeZone | None = Field(
        default=None,
        description="IANA zone, e.g. Europe/Berlin: maintenance windows are local time "
        "(localtime is refused: it would follow the server's machine)",
    )


class VehiclePublic(BaseModel):
    model_config = OUTPUT_MODEL
    vin: str
    make: str | None
    model: str
    model_year: int
    production_date: date
    online: bool
    last_seen: datetime | None
    ecus: list[EcuPublic]
    time_zone: str | None = None
    market: str | None = None
    owner_contact: str | None = None
    decommissioned_at: datetime | None = Field(
        default=None, description="When it left the fleet (exported, scrapped, stolen, other); None while in service"
    )
    decommission_reason: str | None = None
    decommission_detail: str | None = None
    tags: list[str] = Field(default_factory=list, description="Operators' labels (lower case, sorted)")


# What PATCH /api/v1/vehicles/{vin} may change; the rest is the car's identity (or its own word).
# A corrected model year may bring the car into a dynamic recall's population (it joins at the next tick).
VEHICLE_CHANGEABLE = ("time_zone", "market", "owner_contact", "model_year")


class VehicleUpdate(BaseModel):
    """Only the fields given change; null clears one. Anything else is refused by name."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    time_zone: TimeZone | None = Field(default=None, description="IANA zone, e.g. Europe/Berlin")
    market: Text | None = Field(default=None, min_length=1, max_length=64, description="e.g. DE, US-CA")
    owner_contact: Text | None = Field(
        default=None, min_length=1, max_length=200, description="How to reach the owner (e-mail, phone, fleet desk)"
    )
    model_year: int | None = Field(
        default=None,
        ge=1980,
        le=2100,
        description="A corrected model year (cannot be cleared); a dynamic recall it now matches takes the car",
    )

    @model_validator(mode="before")
    @classmethod
    def _only_changeable(cls, data: Any) -> Any:
        """Name every field that may not change, in one sentence, instead of pydantic's per-field 'extra'."""
        if isinstance(data, dict):
            refused = sorted(str(key) for key in data if key not in VEHICLE_CHANGEABLE)
            if refused:
                raise ValueError(
                    f"{', '.join(refused)} cannot be changed: only {', '.join(VEHICLE_CHANGEABLE)} may change"
                )
            if not data:
                raise ValueError(f"nothing to change: give one of {', '.join(VEHICLE_CHANGEABLE)}")
        return data


class VehicleDecommission(BaseModel):
    model_config = INPUT_MODEL
    reason: UnreachableReason = Field(description="exported, scrapped, stolen or other (other needs a detail)")
    detail: Text | None = Field(default=None, min_length=1, max_length=1000, description="What happened, in words")

    @model_validator(mode="after")
    def _other_says_what(self) -> VehicleDecommission:
        if self.reason is UnreachableReason.OTHER and not (self.detail or "").strip():
            raise ValueError("reason other needs a detail saying what happened")
        return self


class VehicleDecommissioned(BaseModel):
    vehicle: VehiclePublic
    removed_from: list[int] = Field(
        description="Campaigns in which the car became unreachable (with the decommission reason)"
    )


class VehiclePage(BaseModel):
    """One page of the fleet, sorted by VIN; pass ``next_cursor`` back as ``cursor`` for the next one."""

    items: list[VehiclePublic]
    next_cursor: str | None = Field(description="Opaque; None on the last page")


class VehicleBatchCreate(BaseModel):
    model_config = INPUT_MODEL
    vehicles: list[VehicleCreate] = Field(min_length=1, max_length=10_000)


class BatchCreated(BaseModel):
    created: int


class HistoryEntry(BaseModel):
    state: str
    reason: str | None
    detail: str | None
    attempt: int
    received_at: datetime
    deferrals: int = 0
    source: str = Field(default="car", description="car, operator, timeout, cancel or retry")


class VehicleCampaignStatus(BaseModel):
    campaign_id: int
    recall_number: str
    state: str
    reason: str | None
    detail: str | None
    updated_at: datetime
    history: list[HistoryEntry]
    next_try_at: datetime | None = Field(
        default=None,
        description="A car deferred outside its maintenance window: when it tries again (its window opens)",
    )
    window: str | None = Field(
        default=None, description="A car deferred outside its maintenance window: the window, in its local time"
    )


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


class ProvisionBatch(BaseModel):
    model_config = INPUT_MODEL
    vins: list[Vin] = Field(min_length=1, max_length=10_000)


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


PEM_MAX = 8192


class CertificateRenewal(BaseModel):
    """A car asks for a new client certificate before its current one expires.

    ``csr`` is a PKCS#10 request for a key the car has just made (EC P-256, CN = its VIN);
    ``signature`` proves it still holds its current certificate's key: base64 of that key's
    ECDSA-SHA256 signature over the request's DER bytes.
    """

    csr: Text = Field(min_length=1, max_length=PEM_MAX, description="PEM certificate signing request, CN = VIN")
    certificate: Text = Field(min_length=1, max_length=PEM_MAX, description="PEM of the car's current certificate")
    signature: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9+/]+={0,2}$",
        description="base64 ECDSA-SHA256 signature of the CSR's DER by the current certificate's key",
    )


class RenewedCertificate(BaseModel):
    vin: str
    client_certificate: str = Field(description="PEM, CN = VIN, for the key in the request")
    ca_certificate: str = Field(description="PEM of the CA that signs broker and car")
    not_after: datetime


class CertificatesRevoked(BaseModel):
    vin: str
    revoked: list[str] = Field(description="Serials (hex) revoked by this request; already revoked ones are not listed")
