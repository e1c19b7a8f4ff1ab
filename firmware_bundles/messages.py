"""Wire messages exchanged over MQTT, with a schema version and strict parsing.

MQTT messages are hints: the signed metadata is the authority. Parsing is strict
(unknown fields, wrong types and oversized payloads are rejected) so a malformed
message is counted and dropped at the edge, never half-understood.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firmware_bundles.errors import MalformedMessage

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024


class ReportState(StrEnum):
    """What a car reports, in the order an update goes through them."""

    NOTIFIED = "notified"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    REMEDIED = "remedied"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        """Position in the update; a report never moves a car to a lower rank."""
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self in (ReportState.REMEDIED, ReportState.FAILED)


_RANK = {state: i for i, state in enumerate(ReportState)}
_RANK[ReportState.FAILED] = _RANK[ReportState.REMEDIED]


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


_STRICT = ConfigDict(extra="forbid", frozen=True, str_max_length=1024)
Vin = Annotated[str, Field(min_length=17, max_length=17, pattern=r"^[A-HJ-NPR-Z0-9]{17}$")]
Nonce = Annotated[str, Field(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class CampaignNotice(BaseModel):
    """Server to car: 'there is a campaign for you; ask the Director what to install'."""

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
    state: ReportState
    reason: FailureReason | None = None
    detail: str = Field(default="", max_length=1000)
    ecu_serial: str | None = Field(default=None, max_length=64)
    installed_version: str | None = Field(default=None, max_length=64)
    health_ok: bool | None = None
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


def parse_report(payload: bytes) -> StatusReport:
    report = _parse(StatusReport, payload)
    if report.state is ReportState.FAILED and report.reason is None:
        raise MalformedMessage("StatusReport: a failed report needs a reason")
    return report


def parse_presence(payload: bytes) -> Presence:
    return _parse(Presence, payload)
