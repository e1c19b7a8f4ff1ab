"""Releases, populations, owner notices and recalls (what an operator files)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from firmware_bundles.messages import OwnerNotice, Preconditions
from ota_server.domain.rollout_plan import STORED, RolloutPlan
from ota_server.schemas.common import (
    CAMPAIGN_NUMBER_PATTERN,
    INPUT_MODEL,
    MAX_POPULATION_MODELS,
    OUTPUT_MODEL,
    EcuFailurePolicy,
    ModelName,
    RemedyType,
    Text,
    campaign_number_shape,
    check_texts,
)
from ota_server.schemas.groups import GroupFilter
from ota_server.schemas.operators import LaunchRequestPublic
from ota_server.schemas.ranges import DateRange, VersionRange, VinRange, YearRange


class ReleasePublic(BaseModel):
    model_config = OUTPUT_MODEL
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
    retired_at: datetime | None = Field(default=None, description="Retired: no new recall may name it (null: in use)")
    retired_by: str | None = Field(default=None, description="Who retired it")
    retire_reason: str | None = Field(default=None, description="Why it was retired")


class ReleaseRetire(BaseModel):
    model_config = INPUT_MODEL
    reason: Text = Field(min_length=1, max_length=1000, description="Why (kept with the release and in the audit log)")


class Population(BaseModel):
    """Which cars a recall covers; every filter given must match (an AND of filters)."""

    model_config = INPUT_MODEL
    models: list[ModelName] | None = Field(default=None, min_length=1, max_length=MAX_POPULATION_MODELS)
    model_years: YearRange | None = None
    vin_range: VinRange | None = None
    production_dates: DateRange | None = None
    hardware_id: Text | None = Field(default=None, max_length=64, description="Defaults to the release's hardware id")
    installed_versions: VersionRange | None = Field(
        default=None, description="Inclusive bounds on the ECU's installed version (PEP 440 ordering)"
    )
    group: Text | None = Field(
        default=None,
        max_length=64,
        description="A saved group (its name or id): its cars only, with every other filter here. At filing the "
        "server stores the group's name, id and filter as they are then (group_id, group_filter): a group changed "
        "or deleted later does not change the recall",
    )
    group_id: int | None = Field(default=None, description="Set by the server at filing")
    group_filter: GroupFilter | None = Field(
        default=None, description="Set by the server at filing: the group's filter as it was then"
    )

    @classmethod
    def stored(cls, data: object) -> Population:
        """A population as a recall stores it, read without re-judging it by rules newer than the recall."""
        return cls.model_validate(data, context=STORED)


ReleaseId = Annotated[int, Field(ge=1, le=2**31 - 1)]
MAX_RECALL_RELEASES = 16  # ECUs one recall may update on one car


class ContactDraft(BaseModel):
    """A person owners can call: every field is required (the recall's 422 names the blank ones)."""

    model_config = INPUT_MODEL
    name: str = Field(default="", max_length=200)
    role: str = Field(default="", max_length=200)
    phone: str = Field(default="", max_length=64)
    email: str = Field(default="", max_length=200)


class OwnerNoticeDraft(BaseModel):
    """The owner notice as filed; :mod:`ota_server.services.owner_notices` resolves it (or says what is missing)."""

    model_config = INPUT_MODEL
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
    model_config = INPUT_MODEL
    campaign_number: Annotated[str, AfterValidator(campaign_number_shape)] = Field(
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
    model_config = INPUT_MODEL
    keyid: str = Field(min_length=1, max_length=128, pattern=r"^[0-9a-f]+$")
    sig: str = Field(min_length=1, max_length=1024, pattern=r"^[0-9a-f]+$")


class TargetsSignatures(BaseModel):
    """Signatures by the offline targets key(s) over the pending targets payload (``ota release sign``)."""

    model_config = INPUT_MODEL
    payload_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the pending bytes that were signed")
    signatures: list[TargetsSignature] = Field(min_length=1, max_length=16)


class TargetsPublished(BaseModel):
    targets_version: int
    release_ids: list[int]
