"""Request and response models (``XCreate`` in, ``XPublic`` out), shared by the API and services.

Field constraints catch shape errors at the edge; rules that need a clear
domain message (VIN check digit, campaign number format, ranges) live in the
services so they speak the same words however they are called.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, InitErrorDetails, PydanticCustomError

from firmware_bundles.errors import InvalidVin
from firmware_bundles.messages import OwnerNotice, Preconditions
from firmware_bundles.vin import normalize_vin, validate_vin
from ota_server.domain.rollout_plan import STORED, RolloutPlan, TimeZone, filing
from ota_server.domain.states import UnreachableReason
from ota_server.roles import Role

_IN = ConfigDict(extra="forbid")
RemedyType = Literal["ota", "dealer", "both"]
EcuFailurePolicy = Literal["all_or_nothing", "keep_successful"]
OperatorOutcome = Literal["remedied_at_dealer", "inspected_not_needed", "unreachable"]
_OUT = ConfigDict(from_attributes=True)
Text64 = Field(min_length=1, max_length=64)

# ISO 3779: the schema states the alphabet and length; the check digit, which a pattern cannot
# state, is named by ``format: vin`` and enforced by the service (firmware_bundles.vin).
# Validated with the same pattern, in words that say what is wrong (pydantic's would quote the regex).
# Either case and white space around it are accepted everywhere and normalized (firmware_bundles.vin.normalize_vin).
VIN_PATTERN = r"^\s*[A-HJ-NPR-Za-hj-npr-z0-9]{17}\s*$"
VIN_RULE = (
    "ISO 3779 VIN: 17 letters and digits, never I, O or Q (either case; white space around it is ignored); "
    "position 9 is the check digit where the region uses one (first character 1-5: North America, L: China)"
)
VIN_SCHEMA: dict[str, Any] = {"pattern": VIN_PATTERN, "format": "vin"}
# Regulator style (NHTSA): two-digit year, a letter, a dash, 3-6 digits; stored upper-cased.
CAMPAIGN_NUMBER_PATTERN = r"^[0-9]{2}[A-Za-z]-[0-9]{3,6}$"


def vin_shape(value: str) -> str:
    """``value`` normalized (upper case, unpadded) if it matches :data:`VIN_PATTERN`; otherwise a ValueError
    saying what is wrong. The API's one VIN rule: :data:`Vin` in bodies, ``VinPath`` and the VIN filters."""
    if re.fullmatch(VIN_PATTERN, value) is None:
        try:
            validate_vin(value)
        except InvalidVin as exc:
            raise ValueError(f"not a valid VIN: {exc}") from None
        raise ValueError("not a valid VIN: 17 letters and digits, without spaces inside")
    return normalize_vin(value)


def _campaign_number_shape(value: str) -> str:
    if re.fullmatch(CAMPAIGN_NUMBER_PATTERN, value) is None:
        raise ValueError(f"{value!r} must look like 24V-123 (YY, letter, dash, 3-6 digits)")
    return value


Vin = Annotated[str, AfterValidator(vin_shape), Field(description=VIN_RULE, json_schema_extra=VIN_SCHEMA)]

# Text every backend can store: PostgreSQL refuses U+0000 in text (SQLite keeps it, so one backend
# would answer 500 where the other stored), and a lone surrogate cannot be encoded as UTF-8 at all.
# The other C0 controls but tab, newline and carriage return have no place in a record either.
_NOT_TEXT = r"\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff"  # escapes, read by re and by JSON Schema
TEXT_PATTERN = f"^[^{_NOT_TEXT}]*$"
_NOT_TEXT_RE = re.compile(f"[{_NOT_TEXT}]")
TEXT_RULE = "text without control characters (tab, newline and carriage return allowed) or lone surrogates"


def text_problem(value: str) -> str | None:
    """What makes ``value`` unfit to store (the first bad character and where), or None."""
    bad = _NOT_TEXT_RE.search(value)
    if bad is None:
        return None
    return f"contains U+{ord(bad.group()):04X} at position {bad.start()}: give {TEXT_RULE}"


def _text(value: str, info: ValidationInfo) -> str:
    problem = text_problem(value)
    if problem is not None and filing(info):
        raise ValueError(problem)
    return value


class _TextPattern:
    """Puts :data:`TEXT_PATTERN` in the JSON schema wherever the type is used (lists, optionals too)."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault("pattern", TEXT_PATTERN)
        return json_schema


# Every free text a person sends goes through this type: refused with a clear 422 on every backend.
Text = Annotated[str, AfterValidator(_text), _TextPattern()]

# Production dates a car can have: model years run from 1980 to 2100, and a car is built at most
# a year before its model year. (JSON Schema cannot bound a date, so the description says it.)
FIRST_PRODUCTION, LAST_PRODUCTION = date(1979, 1, 1), date(2100, 12, 31)


def _production_date(value: date, info: ValidationInfo) -> date:
    if not FIRST_PRODUCTION <= value <= LAST_PRODUCTION and filing(info):
        raise ValueError(
            f"{value.isoformat()} is not a production date: give one from {FIRST_PRODUCTION} to {LAST_PRODUCTION}"
        )
    return value


ProductionDate = Annotated[
    date, AfterValidator(_production_date), Field(description=f"From {FIRST_PRODUCTION} to {LAST_PRODUCTION}")
]


def check_texts(value: Any, where: str) -> None:
    """Every string inside ``value`` (dicts, lists, models dumped to JSON) is :data:`Text`; ValueError naming where."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(f"{where}: {problem}")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_texts(key, f"{where} (a key)")
            check_texts(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_texts(item, f"{where}[{index}]")


class EcuCreate(BaseModel):
    model_config = _IN
    serial: Text = Text64
    hardware_id: Text = Text64
    installed_version: Text = Text64
    primary: bool = False


class EcuPublic(BaseModel):
    model_config = _OUT
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

    model_config = _OUT
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


class DiscrepancyPage(BaseModel):
    items: list[DiscrepancyPublic]
    next_cursor: int | None = Field(description="Pass as cursor for the next page; null on the last")


class VehicleCreate(BaseModel):
    model_config = _IN
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
    model_config = _OUT
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
    model_config = _IN
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
    published: bool = Field(
        default=True, description="False while the release waits for its offline targets signature (ota release sign)"
    )
    rxswin: str | None = Field(default=None, description="The RXSWIN (UNECE R156) the release brings")


class YearRange(BaseModel):
    model_config = _IN
    min: int | None = Field(default=None, ge=0, le=9999)
    max: int | None = Field(default=None, ge=0, le=9999)


class VinRange(BaseModel):
    model_config = _IN
    first: Text = Field(max_length=17)
    last: Text = Field(max_length=17)


class DateRange(BaseModel):
    model_config = _IN
    start: ProductionDate | None = None
    end: ProductionDate | None = None


class VersionRange(BaseModel):
    model_config = _IN
    min: Text | None = Field(default=None, max_length=64)
    max: Text | None = Field(default=None, max_length=64)


class Population(BaseModel):
    """Which cars a recall covers; every filter given must match (an AND of filters)."""

    model_config = _IN
    models: list[Text] | None = None
    model_years: YearRange | None = None
    vin_range: VinRange | None = None
    production_dates: DateRange | None = None
    hardware_id: Text | None = Field(default=None, description="Defaults to the release's hardware id")
    installed_versions: VersionRange | None = Field(
        default=None, description="Inclusive bounds on the ECU's installed version (PEP 440 ordering)"
    )

    @classmethod
    def stored(cls, data: object) -> Population:
        """A population as a recall stores it, read without re-judging it by rules newer than the recall."""
        return cls.model_validate(data, context=STORED)


ReleaseId = Annotated[int, Field(ge=1, le=2**31 - 1)]
MAX_RECALL_RELEASES = 16  # ECUs one recall may update on one car


class ContactDraft(BaseModel):
    """A person owners can call: every field is required (the recall's 422 names the blank ones)."""

    model_config = _IN
    name: str = Field(default="", max_length=200)
    role: str = Field(default="", max_length=200)
    phone: str = Field(default="", max_length=64)
    email: str = Field(default="", max_length=200)


class OwnerNoticeDraft(BaseModel):
    """The owner notice as filed; :mod:`ota_server.services.owner_notices` resolves it (or says what is missing)."""

    model_config = _IN
    purpose: str = Field(default="", max_length=2000)
    what_changes: str = Field(default="", max_length=2000)
    expected_minutes: int | None = Field(default=None, ge=0, le=24 * 60)
    unavailable_functions: list[Annotated[str, Field(max_length=1024)]] | None = Field(default=None, max_length=32)
    what_to_do: str = Field(default="", max_length=2000)
    contact: ContactDraft | None = Field(default=None, description="Default: the manufacturer's configured contact")
    on_success: str = Field(default="", max_length=2000)
    on_failure: str = Field(default="", max_length=2000)
    safety_recall: bool | None = Field(default=None, description="Default: the recall's; must equal it when given")


class RecallCreate(BaseModel):
    model_config = _IN
    campaign_number: Annotated[str, AfterValidator(_campaign_number_shape)] = Field(
        description="Regulator style, e.g. 24V-123 (YY, letter, dash, 3-6 digits)",
        json_schema_extra={"pattern": CAMPAIGN_NUMBER_PATTERN},
    )
    manufacturer_number: Text | None = Field(default=None, max_length=64)
    title: Text = Field(min_length=1, max_length=200)
    defect: Text = Field(min_length=1, max_length=10_000)
    safety_risk: Text = Field(min_length=1, max_length=10_000)
    remedy: Text = Field(min_length=1, max_length=10_000)
    release_id: ReleaseId | None = Field(
        default=None, description="The release to install (one hardware id); or give release_ids"
    )
    release_ids: list[ReleaseId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_RECALL_RELEASES,
        description="Several releases, at most one per hardware id: every affected ECU of a car is updated in "
        "one Director metadata. release_id, if also given, must be one of them",
    )
    population: Population = Field(default_factory=Population)
    safety_recall: bool = Field(
        default=True, description="A safety recall launches only after a second person approves it"
    )
    min_release_counter: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Cars that see this recall refuse any image below this release counter (default: the release's)",
    )
    remedy_type: RemedyType = Field(default="ota", description="How the remedy reaches cars: ota, dealer or both")
    ecu_failure_policy: EcuFailurePolicy = Field(
        default="all_or_nothing",
        description="When one of a car's ECUs fails: every ECU back on its old image (all_or_nothing), or the "
        "ECUs that booted healthy keep the fix and only the failing one goes back (keep_successful); "
        "signed into the Director's targets",
    )
    owner_notice: OwnerNoticeDraft | None = Field(
        default=None,
        description="What the owner is told before and after; required: purpose, what_changes, expected_minutes, "
        "unavailable_functions ([] when none) and a contact (name, role, phone, email) unless the manufacturer's "
        "default contact is configured (a 422 names what is missing)",
    )
    preconditions: Preconditions | None = Field(
        default=None, description="What the car checks before it starts (parked, ignition off, battery...)"
    )
    rollout: RolloutPlan | None = Field(
        default=None, description="Waves, gates, timeouts, retries, rate and windows (default: all cars at once)"
    )
    dynamic: bool = Field(
        default=False,
        description="Also take cars that register (or match) after the launch; the frozen count stays on record",
    )
    requires_consent: bool | None = Field(
        default=None,
        description="The owner must accept before the car installs. Default: yes for a non-safety update; "
        "false e.g. for fleet-owned cars whose operator consents. A safety recall never waits for consent",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _release_missing(cls, data: Any, handler: ModelWrapValidatorHandler[RecallCreate]) -> RecallCreate:
        """A missing release is named with the other missing fields (a check after them would wait for them)."""
        if isinstance(data, dict) and data.get("release_id") is None and not data.get("release_ids"):
            errors: list[InitErrorDetails] = []
            try:
                handler(data)
            except ValidationError as exc:
                errors = cast(list[InitErrorDetails], exc.errors())
            missing: InitErrorDetails = {
                "type": PydanticCustomError("missing", "Field required: give release_id or release_ids"),
                "loc": ("release_id",),
                "input": data,
            }
            raise ValidationError.from_exception_data(cls.__name__, [*errors, missing])
        return handler(data)

    @model_validator(mode="after")
    def _releases_named(self) -> RecallCreate:
        """Each release named once; ``release_id`` with ``release_ids`` is one of them."""
        if self.release_ids is not None:
            repeated = sorted({r for r in self.release_ids if self.release_ids.count(r) > 1})
            if repeated:
                raise ValueError(f"release_ids names release {repeated[0]} more than once")
            if self.release_id is not None and self.release_id not in self.release_ids:
                raise ValueError(f"release_id {self.release_id} is not one of release_ids {self.release_ids}")
        return self

    @property
    def all_release_ids(self) -> list[int]:
        """Every release to install, the primary first (``release_id``, else the first of ``release_ids``)."""
        others = [r for r in self.release_ids or [] if r != self.release_id]
        return [self.release_id, *others] if self.release_id is not None else others

    @model_validator(mode="after")
    def _contract_texts(self) -> RecallCreate:
        """The wire contract's models (owner notice, preconditions) hold texts too: same rule, checked deep."""
        for name in ("owner_notice", "preconditions"):
            part = getattr(self, name)
            if part is not None:
                check_texts(part.model_dump(mode="json"), name)
        return self


class RecallPublic(BaseModel):
    id: int
    campaign_number: str
    manufacturer_number: str | None
    title: str
    defect: str
    safety_risk: str
    remedy: str
    release_id: int = Field(description="The primary release (the only one of a one-ECU recall)")
    release_ids: list[int] = Field(
        default_factory=list, description="Every release the recall installs, one per hardware id, primary first"
    )
    population: Population
    affected_count: int = Field(description="Cars the population matches now (a preview until launch)")
    campaign_id: int | None
    created_at: datetime
    safety_recall: bool = True
    launch_request: LaunchRequestPublic | None = None
    min_release_counter: int | None = None
    remedy_type: str = "ota"
    ecu_failure_policy: str = "all_or_nothing"
    owner_notice: OwnerNotice | None = None
    preconditions: Preconditions = Field(default_factory=Preconditions)
    requires_consent: bool = Field(default=False, description="Non-safety updates wait for the owner's consent")
    rollout: RolloutPlan = Field(default_factory=RolloutPlan)
    dynamic: bool = False


class TargetsSignature(BaseModel):
    model_config = _IN
    keyid: str = Field(min_length=1, max_length=128, pattern=r"^[0-9a-f]+$")
    sig: str = Field(min_length=1, max_length=1024, pattern=r"^[0-9a-f]+$")


class TargetsSignatures(BaseModel):
    """Signatures by the offline targets key(s) over the pending targets payload (``ota release sign``)."""

    model_config = _IN
    payload_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the pending bytes that were signed")
    signatures: list[TargetsSignature] = Field(min_length=1, max_length=16)


class TargetsPublished(BaseModel):
    targets_version: int
    release_ids: list[int]


class CampaignPublic(BaseModel):
    model_config = _OUT
    id: int
    recall_id: int
    release_id: int
    population: int = Field(description="Cars in the campaign now (grows only in a dynamic campaign)")
    launched_at: datetime
    launch_population: int | None = Field(default=None, description="The count frozen at launch")
    status: str = Field(
        default="active",
        description="active, paused, cancelled or completed (every car final; a car moving again reopens it)",
    )
    status_reason: str | None = Field(
        default=None, description="Who or which gate paused or cancelled it, and why (or the error that paused it)"
    )
    current_wave: int = Field(default=0, description="Index of the highest wave opened so far")
    kind: str = Field(
        default="remedy", description="remedy (the recall's fix) or rollback (launched by a tripped error threshold)"
    )
    parent_campaign_id: int | None = Field(
        default=None, description="For a rollback campaign: the remedy campaign whose wave tripped"
    )


class WaveProgress(BaseModel):
    index: int
    size: int
    counts: dict[str, int] = Field(description="Cars of this wave per state (zeros left out)")
    remedied: int
    errors: int = Field(description="Failed, rolled back or timed out")
    needed: int = Field(description="Remedied cars the success threshold asks for")
    gate: str = Field(
        description="waiting, passed or tripped (errors crossed the threshold); unknown: the stored plan is unreadable"
    )
    opened: bool


class EcuProgress(BaseModel):
    """A campaign's affected ECUs of one hardware id, by their car's state.

    Under the recall's keep_successful policy a failed car may have some ECUs on the fix:
    ``on_fix`` counts the ECUs whose car's signed manifest shows their release.
    """

    hardware_id: str
    release_id: int = Field(description="The release these ECUs install")
    ecus: int = Field(description="Affected ECUs of this hardware id (one per car, or more)")
    counts: dict[str, int] = Field(description="These ECUs by their car's state; adds up to ecus")
    failed_here: int = Field(
        description="Failed, rolled-back or timed-out cars whose failure names one of these ECUs (the car's "
        "signed report's ecu_serial; an older agent's detail: 'ECU <serial>: ...')"
    )
    on_fix: int = Field(
        default=0, description="These ECUs whose car's signed version manifest shows their release installed"
    )


class Progress(BaseModel):
    """Counts per state always add up to ``population``."""

    campaign_id: int
    recall_number: str
    population: int
    counts: dict[str, int]
    failures_by_reason: dict[str, int] = Field(description="Failed, rolled-back and timed-out cars by reason")
    notices_published: int
    done: bool = Field(
        description="No car can change without an operator: nothing left to notify, nothing in flight, "
        "no retry scheduled or still owed by the plan"
    )
    status: str = "active"
    status_reason: str | None = None
    current_wave: int = 0
    waves: list[WaveProgress] = Field(default_factory=list)
    unreachable_by_reason: dict[str, int] = Field(default_factory=dict)
    retries_scheduled: int = Field(default=0, description="Cars waiting for a retry notice")
    kind: str = Field(default="remedy", description="remedy or rollback")
    rollback_campaign_id: int | None = Field(
        default=None,
        description="The rollback campaign launched from this one (by the error threshold or an operator), if any",
    )
    parent_campaign_id: int | None = Field(
        default=None, description="A rollback campaign: the remedy campaign it rolls back"
    )
    ecus: list[EcuProgress] = Field(
        default_factory=list, description="Per hardware id of the recall's releases: its ECUs by their car's state"
    )


class CampaignControl(BaseModel):
    model_config = _IN
    reason: Text = Field(default="", max_length=1000, description="Why (kept with the status and in the audit log)")


class RollbackStart(BaseModel):
    """An operator's rollback of a paused campaign: the plan's rollback release to its remedied cars."""

    model_config = _IN
    reach: Literal["wave", "campaign"] | None = Field(
        default=None,
        description="The open wave's remedied cars or every remedied car of the campaign; "
        "default: the recall's rollback_reach ('campaign' when that is 'none')",
    )
    reason: Text = Field(default="", max_length=1000, description="Why (kept with the status and in the audit log)")


class ControlResult(BaseModel):
    campaign: CampaignPublic
    vehicles: int = Field(description="Cars the action touched (withdrawn, retried...)")


class OutcomeCreate(BaseModel):
    """An operator's record for one car: fixed at a dealer, inspected and not needed, or unreachable."""

    model_config = _IN
    outcome: OperatorOutcome
    reason: UnreachableReason | None = Field(
        default=None, description="For unreachable: exported, stolen, scrapped, other"
    )
    evidence: Text = Field(
        min_length=1, max_length=5000, description="What shows it (repair order, inspection note...)"
    )
    reference: Text | None = Field(default=None, max_length=200, description="e.g. the dealer's repair order number")


class VinOutcome(BaseModel):
    campaign_id: int
    vin: str
    state: str
    reason: str | None
    detail: str | None
    recorded_by: str | None
    evidence_ref: str | None
    updated_at: datetime


class NoticeLogEntry(BaseModel):
    """One message the broker accepted for a car: a campaign notice or a withdrawal."""

    model_config = _OUT
    campaign_id: int
    vin: str
    kind: str
    nonce: str
    payload: dict[str, Any]
    published_at: datetime


class OwnerLetterCreate(BaseModel):
    """Owner letters mailed (or e-mailed) for a recall: the first notification or a follow-up."""

    model_config = _IN
    vins: list[Vin] | Literal["all"] = Field(
        description="The cars whose owners got the letter, or 'all': every car of the recall's population"
    )
    sent_on: date = Field(description="The date the letters were mailed")
    letter: Literal["first", "follow_up"] = Field(description="The first notification or a follow-up")
    channel: Literal["letter", "email"] = "letter"
    text: str = Field(min_length=1, max_length=20_000, description="The letter's full text")


class OwnerLettersRecorded(BaseModel):
    recorded: int


class OwnerNotificationPublic(BaseModel):
    """One thing told to one car's owner: when, through which channel, the text (or only its sha256)."""

    model_config = _OUT
    id: int
    recall_id: int
    campaign_id: int | None
    vin: str
    kind: str
    channel: str
    at: datetime
    text: str
    text_sha256: str
    detail: str
    recorded_by: str


class OwnerNotificationPage(BaseModel):
    rows: list[OwnerNotificationPublic]
    next_after: int | None = Field(description="Pass as ?after= for the next page; null on the last one")


class IngestStats(BaseModel):
    accepted: int
    duplicates: int
    rejected: dict[str, int]
    junk: int = Field(
        0,
        description="Messages that were not a car's genuine report (unsigned, forged, malformed, or cut "
        "by the junk budgets), by any reason; they never spend a car's own allowance",
    )
    manifests: int = Field(0, description="Version manifests accepted (a replayed one is rejected: manifest_replayed)")
    discrepancies: dict[str, int] = Field(
        default_factory=dict, description="Discrepancies found in manifests since the start, by kind"
    )


class ProvisionBatch(BaseModel):
    model_config = _IN
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


# --- operators: tokens, launch approval, audit ---------------------------------------


class TokenCreate(BaseModel):
    model_config = _IN
    name: Text = Field(min_length=1, max_length=64, description="The person this token belongs to")
    role: Role


class TokenPublic(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str = Field(description="The secret's first characters, to tell tokens apart")
    created_by: str
    created_by_token: int | None = Field(
        description="The id of the token that created this one (none for the bootstrap token)"
    )
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


class ErrorBody(BaseModel):
    """Every error answer's body (401 to 503): one sentence, or several joined by '; ' for a 422."""

    detail: str = Field(description="What is wrong, in words a person can act on")
