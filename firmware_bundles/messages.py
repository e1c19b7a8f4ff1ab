"""Wire messages exchanged over MQTT, with a schema version and strict parsing.

MQTT messages are hints: the signed metadata is the authority. Parsing is strict
(unknown fields, wrong types and oversized payloads are rejected) so a malformed
message is counted and dropped at the edge, never half-understood.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Annotated, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from firmware_bundles.errors import MalformedMessage

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024


class ReportState(StrEnum):
    """What a car reports, in the order an update goes through them."""

    NOTIFIED = "notified"
    DEFERRED = "deferred"  # preconditions not met or the owner postponed; the car tries again later
    CONSENTED = "consented"  # the owner accepted a non-safety update (safety recalls need no consent)
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    REMEDIED = "remedied"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"  # the new slot did not boot or failed its health check; old slot runs
    DECLINED = "declined"  # the owner declined a non-safety update
    WITHDRAWN = "withdrawn"  # the campaign was cancelled before this car started installing

    @property
    def rank(self) -> int:
        """Position in the update; a report never moves a car to a lower rank."""
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {ReportState.REMEDIED, ReportState.FAILED, ReportState.ROLLED_BACK, ReportState.DECLINED, ReportState.WITHDRAWN}
)
_ORDER = [s for s in ReportState if s not in _TERMINAL]
_RANK = {state: i for i, state in enumerate(_ORDER)}
_RANK.update({state: len(_ORDER) for state in _TERMINAL})


class FailureReason(StrEnum):
    """Precise reason codes a car reports with ``failed``."""

    METADATA_FETCH_FAILED = "metadata_fetch_failed"
    METADATA_SIGNATURE_INVALID = "metadata_signature_invalid"
    METADATA_EXPIRED = "metadata_expired"
    METADATA_ROLLBACK = "metadata_rollback"
    METADATA_INVALID = "metadata_invalid"
    NO_DIRECTOR_ASSIGNMENT = "no_director_assignment"
    NOT_FOR_THIS_VEHICLE = "not_for_this_vehicle"
    UNKNOWN_ECU = "unknown_ecu"
    TARGET_NOT_IN_IMAGE_REPO = "target_not_in_image_repo"
    TARGET_MISMATCH = "target_mismatch"
    HARDWARE_MISMATCH = "hardware_mismatch"
    # The image is below a minimum release counter a recall set (kept by the car as a floor).
    BELOW_MINIMUM_VERSION = "below_minimum_version"
    DOWNLOAD_FAILED = "download_failed"
    DOWNLOAD_TOO_SLOW = "download_too_slow"
    INSUFFICIENT_STORAGE = "insufficient_storage"
    LENGTH_MISMATCH = "length_mismatch"
    HASH_MISMATCH = "hash_mismatch"
    BUNDLE_INVALID = "bundle_invalid"
    INSTALL_FAILED = "install_failed"
    BOOT_FAILED = "boot_failed"
    HEALTH_CHECK_FAILED = "health_check_failed"
    INTERNAL_ERROR = "internal_error"


_STRICT = ConfigDict(extra="forbid", frozen=True, str_max_length=1024, defer_build=True)
Vin = Annotated[str, Field(min_length=17, max_length=17, pattern=r"^[A-HJ-NPR-Z0-9]{17}$")]
Nonce = Annotated[str, Field(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class Network(StrEnum):
    WIFI = "wifi"
    CELLULAR = "cellular"
    ETHERNET = "ethernet"


class Preconditions(BaseModel):
    """Safety preconditions the server declares and the car checks before it starts.

    When one is not met the car reports ``deferred`` with the reason and tries again later.
    """

    model_config = _STRICT
    parked: bool = True
    ignition_off: bool = True
    min_battery_percent: int = Field(default=30, ge=0, le=100)
    # kept in reserve so a failed install can still roll back
    rollback_reserve_percent: int = Field(default=10, ge=0, le=100)
    # bundles larger than this may only download over these networks
    large_bundle_bytes: int = Field(default=100 * 1024 * 1024, ge=0)
    large_bundle_networks: tuple[Network, ...] = (Network.WIFI, Network.ETHERNET)


class Contact(BaseModel):
    model_config = _STRICT
    name: str = Field(max_length=200)
    role: str = Field(default="", max_length=200)  # e.g. "Recall coordinator"; older messages have none
    phone: str = Field(default="", max_length=64)
    email: str = Field(default="", max_length=200)


class OwnerNotice(BaseModel):
    """What the owner is told before and after, shown through the agent's notice hook."""

    model_config = _STRICT
    purpose: str = Field(max_length=2000)
    safety_recall: bool = True
    what_changes: str = Field(default="", max_length=2000)
    expected_minutes: int = Field(default=30, ge=0, le=24 * 60)
    unavailable_functions: tuple[str, ...] = ()
    what_to_do: str = Field(default="", max_length=2000)
    contact: Contact
    on_success: str = Field(default="", max_length=2000)
    on_failure: str = Field(default="", max_length=2000)


# A carried file is at most this long; the whole notice stays under MAX_MESSAGE_BYTES anyway.
CARRIED_FILE_CHARS = 12 * 1024


class CarriedMetadata(BaseModel):
    """A repository's timestamp, snapshot and targets, exactly the signed bytes it serves."""

    model_config = _STRICT
    timestamp: str = Field(min_length=2, max_length=CARRIED_FILE_CHARS)
    snapshot: str = Field(min_length=2, max_length=CARRIED_FILE_CHARS)
    targets: str = Field(min_length=2, max_length=CARRIED_FILE_CHARS)


class DirectorMetadata(CarriedMetadata):
    """This car's Director timestamp, snapshot and targets, exactly the signed bytes the Director serves.

    Carried in a notice to save the car three requests. Not trusted for being here: the car
    feeds them to python-tuf as if fetched (signatures, versions, expiry, lengths all checked)
    and fetches over HTTP when they fail, so a forged or replayed copy costs a request, no more.
    """


class ImageMetadata(CarriedMetadata):
    """The Image repository's timestamp, snapshot and targets, exactly the signed bytes it serves.

    The same for every car, carried in a notice (when the notice still fits) to save the car
    three requests; trusted exactly as little as :class:`DirectorMetadata`: fed to python-tuf
    as if fetched, and fetched over HTTP when refused.
    """


class CampaignNotice(BaseModel):
    """Server to car: 'there is a campaign for you; ask the Director what to install'.

    ``director_metadata`` is optional and new: an agent older than it rejects a notice that
    has it (strict parsing), so the server adds it only when told its fleet's agents take it
    (``OTA_NOTICE_CARRIES_METADATA``); every agent takes a notice without it.
    """

    model_config = _STRICT
    schema_version: Literal[1] = 1
    kind: Literal["campaign"] = "campaign"
    campaign_id: int = Field(ge=1)
    vin: Vin
    nonce: Nonce
    recall_number: str = Field(max_length=64)
    title: str = Field(max_length=200)
    safety_recall: bool = True
    repo_url: str = Field(max_length=512, description="Base URL of the server's /repo endpoints")
    issued_at: datetime
    preconditions: Preconditions | None = None
    owner_notice: OwnerNotice | None = None
    # non-safety updates wait for the owner's accept/decline/postpone; safety recalls never do
    requires_consent: bool = False
    # The owner's page for this car and campaign (the notice's text, the signed version and
    # hash, accept/decline); its answer reaches the car only inside the Director's signed metadata.
    owner_url: str | None = Field(default=None, max_length=512)
    director_metadata: DirectorMetadata | None = None
    # New in session 9, optional like ``director_metadata`` and gated the same way: an agent
    # older than it rejects a notice that has it.
    image_metadata: ImageMetadata | None = None


class CampaignWithdrawal(BaseModel):
    """Server to car on the campaign topic: the campaign was cancelled for this car.

    A car that has not started installing stops and reports ``withdrawn``; one that has
    finishes or rolls back cleanly and reports as usual. Like a notice it is a hint: the
    Director's metadata is the authority.
    """

    model_config = _STRICT
    schema_version: Literal[1] = 1
    kind: Literal["withdrawal"] = "withdrawal"
    campaign_id: int = Field(ge=1)
    vin: Vin
    nonce: Nonce
    issued_at: datetime


class ReportSignature(BaseModel):
    """The car's signature over the canonical JSON of the report without this field."""

    model_config = _STRICT
    keyid: str = Field(pattern=r"^[0-9a-f]{64}$")
    sig: str = Field(min_length=2, max_length=1024, pattern=r"^[0-9a-f]+$")


class StatusReport(BaseModel):
    """Car to server: one step of one campaign on one car.

    ``signature`` is optional in the schema so a report can be built and then signed
    (:mod:`firmware_bundles.report_signing`); the server rejects a report without one.
    """

    model_config = _STRICT
    schema_version: Literal[1] = 1
    kind: Literal["status"] = "status"
    campaign_id: int = Field(ge=1)
    vin: Vin
    nonce: Nonce
    attempt: int = Field(default=1, ge=1, le=1000)
    # how many times this attempt was deferred so far: each deferral is its own event
    deferrals: int = Field(default=0, ge=0, le=100_000)
    state: ReportState
    reason: FailureReason | None = None
    detail: str = Field(default="", max_length=1000)
    ecu_serial: str | None = Field(default=None, max_length=64)
    installed_version: str | None = Field(default=None, max_length=64)
    health_ok: bool | None = None
    sent_at: datetime

    @property
    def progress(self) -> tuple[int, int, int]:
        """The order of a car's reports within a campaign: (attempt, deferrals, state rank).

        A report may move a car's state only to a greater key; each deferral raises
        ``deferrals``, so deferred -> consented -> deferred again -> downloading stays
        strictly increasing, and duplicates or late arrivals never move it back.
        """
        return (self.attempt, self.deferrals, self.state.rank)

    signature: ReportSignature | None = None


MAX_BATCH_REPORTS = 32  # steps one report batch may carry (~400 bytes each: well inside 16 KiB)


class ReportBatch(BaseModel):
    """Car to server on its status topic: consecutive steps of one car, in order, in one signed message.

    Steps that follow each other within a moment (the agent's ``report_linger_s``) travel
    together: one MQTT message, one signature, one ingest of the car instead of one per step.
    Each step is a :class:`StatusReport` of this VIN without its own signature; the batch's
    ``signature`` covers them all (canonical JSON of the batch without it). The server records
    each step as if it had come alone, in the order given.
    """

    model_config = _STRICT
    schema_version: Literal[1] = 1
    kind: Literal["status_batch"] = "status_batch"
    vin: Vin
    reports: tuple[StatusReport, ...] = Field(min_length=1, max_length=MAX_BATCH_REPORTS)
    # The car's version manifest, when one was queued with these steps (the install manifest
    # goes with the remedied step): this VIN's, without its own signature, recorded after the
    # steps as if it had come alone. New in session 9: deploy the server before the cars.
    manifest: VersionManifest | None = None
    sent_at: datetime
    signature: ReportSignature | None = None


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ManifestReason(StrEnum):
    """Why the car sent its version manifest."""

    START = "start"  # the agent started (every boot)
    INSTALL = "install"  # an install committed (the new image booted and passed its health check)
    ROLLBACK = "rollback"  # an install was undone: the old image runs again
    DAILY = "daily"  # nothing changed; the car says so at least once a day
    REQUESTED = "requested"  # the server asked (reserved)


class EcuManifest(BaseModel):
    """What one ECU runs, as the car measured it.

    ``image_sha256``/``image_length`` describe the image in the active slot, hashed by the
    car from the slot itself (so a tampered or hand-flashed image shows as such);
    ``target_*`` name the Image-repository target it was installed from, when the car
    installed it through a campaign (absent for the factory image).
    """

    model_config = _STRICT
    ecu_serial: str = Field(min_length=1, max_length=64)
    hardware_id: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=64)
    release_counter: int | None = Field(default=None, ge=0, le=2**31 - 1)
    image_sha256: Sha256 | None = None
    image_length: int | None = Field(default=None, ge=0, le=2**53)
    target_path: str | None = Field(default=None, max_length=255)
    target_sha256: Sha256 | None = None
    target_length: int | None = Field(default=None, ge=0, le=2**53)
    # the slot it runs from (A/B), for the operator's eyes only
    slot: str | None = Field(default=None, max_length=16)


class VersionManifest(BaseModel):
    """Car to server on its status topic: what every ECU runs (Uptane's vehicle version manifest).

    Signed with the car's report key like a :class:`StatusReport`. ``counter`` grows by
    one with every manifest the car sends (kept in its journal across restarts), so the
    server refuses an older or replayed manifest.
    """

    model_config = _STRICT
    schema_version: Literal[1] = 1
    kind: Literal["manifest"] = "manifest"
    vin: Vin
    counter: int = Field(ge=1, le=2**53)
    reason: ManifestReason
    agent_version: str = Field(default="", max_length=64)
    ecus: tuple[EcuManifest, ...] = Field(min_length=1, max_length=32)
    sent_at: datetime
    signature: ReportSignature | None = None


class Presence(BaseModel):
    """Car to server, retained; the broker publishes ``online=False`` as the Last-Will."""

    model_config = _STRICT
    schema_version: Literal[1] = 1
    kind: Literal["presence"] = "presence"
    vin: Vin
    online: bool
    agent_version: str = Field(default="", max_length=64)


M = TypeVar("M", bound=BaseModel)
K = TypeVar("K")


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=True).encode()


def _parse(model: type[M], payload: bytes) -> M:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"{model.__name__}: {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise MalformedMessage(f"{model.__name__}: {where}: {first['msg']}") from exc


def parse_notice(payload: bytes) -> CampaignNotice:
    return _parse(CampaignNotice, payload)


def parse_withdrawal(payload: bytes) -> CampaignWithdrawal:
    return _parse(CampaignWithdrawal, payload)


def _by_kind(adapter: TypeAdapter[K], models: tuple[type[BaseModel], ...], payload: bytes) -> K:
    """One of ``models``, chosen by the message's own ``kind`` field wherever it sits (a message
    without one is the first model's, the kind that may leave it out); a refusal names the kind
    the message claims. Told apart by pydantic's tagged union, not a byte search: one looked at
    the first 4 KiB only and also matched the kind's word anywhere, e.g. in a report's detail."""
    default = models[0]
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"{default.__name__}: {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if b'"kind"' not in payload:
        return cast(K, _parse(default, payload))
    try:
        return adapter.validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            raise MalformedMessage(f"{default.__name__}: kind: {first['msg']}") from exc
        names = {model.model_fields["kind"].default: model.__name__ for model in models}
        name = names.get(loc[0]) if loc else None
        where = ".".join(loc[1:] if name else loc) or "message"
        raise MalformedMessage(f"{name or default.__name__}: {where}: {first['msg']}") from exc


def parse_campaign_message(payload: bytes) -> CampaignNotice | CampaignWithdrawal:
    """What arrives on a car's campaign topic: a notice or a withdrawal, told apart by ``kind``."""
    return _by_kind(_campaign_messages(), (CampaignNotice, CampaignWithdrawal), payload)


def parse_report(payload: bytes) -> StatusReport:
    return _checked_report(_parse(StatusReport, payload))


def _checked_report(report: StatusReport) -> StatusReport:
    if report.state is ReportState.FAILED and report.reason is None:
        raise MalformedMessage("StatusReport: a failed report needs a reason")
    return report


def parse_presence(payload: bytes) -> Presence:
    return _parse(Presence, payload)


def parse_manifest(payload: bytes) -> VersionManifest:
    return _parse(VersionManifest, payload)


def parse_report_batch(payload: bytes) -> ReportBatch:
    """A report batch: every step this batch's VIN's, unsigned itself, a failed one with its reason."""
    return _checked_batch(_parse(ReportBatch, payload))


def _checked_batch(batch: ReportBatch) -> ReportBatch:
    for i, report in enumerate(batch.reports):
        if report.vin != batch.vin:
            raise MalformedMessage(f"ReportBatch: reports.{i}.vin: not the batch's VIN")
        if report.signature is not None:
            raise MalformedMessage(f"ReportBatch: reports.{i}.signature: a step is signed by the batch, not alone")
        if report.state is ReportState.FAILED and report.reason is None:
            raise MalformedMessage(f"ReportBatch: reports.{i}: a failed report needs a reason")
    if batch.manifest is not None:
        if batch.manifest.vin != batch.vin:
            raise MalformedMessage("ReportBatch: manifest.vin: not the batch's VIN")
        if batch.manifest.signature is not None:
            raise MalformedMessage("ReportBatch: manifest.signature: a manifest is signed by the batch, not alone")
    return batch


StatusMessage = StatusReport | ReportBatch | VersionManifest  # what a car sends on its status topic


@cache  # built on first use, not at import: the agent's start-up stays light
def _status_messages() -> TypeAdapter[StatusMessage]:
    return TypeAdapter(Annotated[StatusMessage, Field(discriminator="kind")])


@cache
def _campaign_messages() -> TypeAdapter[CampaignNotice | CampaignWithdrawal]:
    return TypeAdapter(Annotated[CampaignNotice | CampaignWithdrawal, Field(discriminator="kind")])


def is_manifest(payload: bytes) -> bool:
    """Whether a message on a car's status topic is a manifest (by its ``kind``; False if unreadable)."""
    try:
        return isinstance(parse_status_message(payload), VersionManifest)
    except MalformedMessage:
        return False


def parse_status_message(payload: bytes) -> StatusMessage:
    """What arrives on a car's status topic: a report, a report batch or a version manifest, told
    apart by ``kind`` (a report may leave it out)."""
    message = _by_kind(_status_messages(), (StatusReport, ReportBatch, VersionManifest), payload)
    if isinstance(message, ReportBatch):
        return _checked_batch(message)
    return _checked_report(message) if isinstance(message, StatusReport) else message
