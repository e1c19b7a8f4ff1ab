"""The relational schema.

Campaign populations are frozen into ``campaign_vehicles`` at launch so later
fleet changes never move a campaign's denominator; ``campaign_events`` is the
append-only history whose unique key makes report ingest idempotent.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false, true


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {datetime: UtcDateTime(), dict[str, Any]: JSON()}


class Vehicle(Base):
    __tablename__ = "vehicles"

    id: Mapped[int] = mapped_column(primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), unique=True)
    make: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64), index=True)
    model_year: Mapped[int] = mapped_column(Integer)
    production_date: Mapped[date] = mapped_column(Date)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[datetime | None]
    created_at: Mapped[datetime]
    # The vehicle's identity (``ota vehicles provision``): the public half of its report
    # key, as securesystemslib's key dict, and the serial of its MQTT client certificate.
    report_keyid: Mapped[str | None] = mapped_column(String(64), index=True)
    report_key: Mapped[dict[str, Any] | None]
    certificate_serial: Mapped[str | None] = mapped_column(String(40))
    provisioned_at: Mapped[datetime | None]
    # IANA zone (e.g. Europe/Berlin): maintenance windows are in the car's local time.
    time_zone: Mapped[str | None] = mapped_column(String(64))
    # What an operator may change later (PATCH): the market it is sold in and how to reach its owner.
    market: Mapped[str | None] = mapped_column(String(64))
    owner_contact: Mapped[str | None] = mapped_column(String(200))
    # Exported, scrapped, stolen or other (with a text): out of every open and future population.
    decommissioned_at: Mapped[datetime | None]
    decommission_reason: Mapped[str | None] = mapped_column(String(16))
    decommission_detail: Mapped[str | None] = mapped_column(Text)
    # The counter of the last version manifest accepted from the car (it only grows: an older
    # or replayed manifest is refused) and the sha256 of its signature (a QoS 1 redelivery of
    # that same manifest is a duplicate, not a replay).
    manifest_counter: Mapped[int | None] = mapped_column(BigInteger)
    manifest_digest: Mapped[str | None] = mapped_column(String(64))

    ecus: Mapped[list[Ecu]] = relationship(
        back_populates="vehicle", order_by="Ecu.id", lazy="selectin", cascade="all, delete-orphan"
    )
    # Operators' labels (``services/groups.py``); ``tags`` is what the API shows.
    tag_rows: Mapped[list[VehicleTag]] = relationship(
        order_by="VehicleTag.tag", lazy="selectin", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def tags(self) -> list[str]:
        return sorted(row.tag for row in self.tag_rows)


def _declared_default(context: Any) -> Any:
    """A new ECU's declared version is the version it is registered with."""
    return context.get_current_parameters().get("installed_version")


class Ecu(Base):
    __tablename__ = "ecus"
    __table_args__ = (UniqueConstraint("vehicle_id", "serial", name="uq_ecus_vehicle_serial"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"), index=True)
    serial: Mapped[str] = mapped_column(String(64))
    hardware_id: Mapped[str] = mapped_column(String(64), index=True)
    # What the ECU runs: the car's last signed word (its version manifest) once it sent one,
    # until then the version declared at registration. Populations, the Director and the
    # reports read this one column, so they all go by the car's word when there is one.
    installed_version: Mapped[str] = mapped_column(String(64))
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    # What registration declared (never changed by a manifest).
    declared_version: Mapped[str | None] = mapped_column(String(64), default=_declared_default)
    # From the last manifest (all None until the first): when it was received, the image the
    # car measured in the active slot, the target it was installed from and its hardware id.
    reported_at: Mapped[datetime | None]
    installed_sha256: Mapped[str | None] = mapped_column(String(64))
    installed_length: Mapped[int | None] = mapped_column(BigInteger)
    installed_target: Mapped[str | None] = mapped_column(String(255))
    installed_release_counter: Mapped[int | None] = mapped_column(Integer)
    reported_hardware_id: Mapped[str | None] = mapped_column(String(64))

    vehicle: Mapped[Vehicle] = relationship(back_populates="ecus")

    @property
    def source(self) -> str:
        """``reported`` once the car's manifest spoke for this ECU, ``declared`` before."""
        return "reported" if self.reported_at is not None else "declared"


class VehicleCertificate(Base):
    """Every MQTT client certificate issued to a car, so a replaced one can be revoked (and listed in the CRL)."""

    __tablename__ = "vehicle_certificates"

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"), index=True)
    serial: Mapped[str] = mapped_column(String(40), unique=True)
    issued_at: Mapped[datetime]
    # None for certificates issued before this table existed (their end is unknown: kept in the CRL)
    not_after: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None] = mapped_column(index=True)
    # the PEM (public), so a renewal whose answer was lost can be answered again
    certificate: Mapped[str | None] = mapped_column(Text)


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("hardware_id", "version", name="uq_releases_hardware_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    release_counter: Mapped[int] = mapped_column(Integer)
    target_path: Mapped[str] = mapped_column(String(255), unique=True)
    length: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    # The image inside the bundle, signed into the target so a delta's result can be checked.
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_size: Mapped[int | None] = mapped_column(BigInteger)
    # False while the release waits for the offline targets signature (``ota release sign``).
    published: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The RXSWIN (UNECE R156 software identification) a car carries once it runs this release.
    rxswin: Mapped[str | None] = mapped_column(String(64))
    # Retired (``POST /releases/{id}/retire``): no new recall may name it; the row stays for the record.
    retired_at: Mapped[datetime | None]
    retired_by: Mapped[str | None] = mapped_column(String(64))
    retire_reason: Mapped[str | None] = mapped_column(Text)


class Delta(Base):
    """A binary delta from an older image to a release's image, its own Image-repository target."""

    __tablename__ = "deltas"
    __table_args__ = (UniqueConstraint("release_id", "base_image_sha256", name="uq_deltas_release_base"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), index=True)
    base_image_sha256: Mapped[str] = mapped_column(String(64))
    target_path: Mapped[str] = mapped_column(String(255), unique=True)
    length: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]

    release: Mapped[Release] = relationship(lazy="joined")


class Recall(Base):
    __tablename__ = "recalls"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_number: Mapped[str] = mapped_column(String(32), unique=True)
    manufacturer_number: Mapped[str | None] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    defect: Mapped[str] = mapped_column(Text)
    safety_risk: Mapped[str] = mapped_column(Text)
    remedy: Mapped[str] = mapped_column(Text)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    population: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    # A safety recall launches only after a second person approves it (LaunchRequest).
    safety_recall: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The lowest release counter a car may install once it has seen this recall (None: the release's).
    min_release_counter: Mapped[int | None] = mapped_column(Integer)
    remedy_type: Mapped[str] = mapped_column(String(8), default="ota", server_default="ota")
    # Wire-contract JSON (firmware_bundles.messages.OwnerNotice / Preconditions) and the
    # rollout plan (ota_server.domain.rollout_plan.RolloutPlan); None means the defaults.
    owner_notice: Mapped[dict[str, Any] | None]
    preconditions: Mapped[dict[str, Any] | None]
    rollout: Mapped[dict[str, Any] | None]
    # A dynamic campaign also takes cars that register or report an affected version later.
    dynamic: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The owner must accept before the car installs (never for a safety recall).
    requires_consent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When one of a car's ECUs fails: all_or_nothing (every ECU back on its old image) or
    # keep_successful (the healthy ECUs keep the fix). Signed into the Director's targets.
    ecu_failure_policy: Mapped[str] = mapped_column(
        String(16), default="all_or_nothing", server_default="all_or_nothing"
    )


class RecallRelease(Base):
    """One release a recall installs: at most one per hardware id (the primary key says so).

    Every recall has its own release here (``recalls.release_id``, the primary one); a
    multi-ECU recall has one more per further hardware id, installed on the same car in the
    same Director metadata.
    """

    __tablename__ = "recall_releases"

    recall_id: Mapped[int] = mapped_column(ForeignKey("recalls.id", ondelete="CASCADE"), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    position: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # order as filed


class Campaign(Base):
    """One rollout of a release to a recall's cars.

    A recall has one ``remedy`` campaign (its fix) and at most one ``rollback`` campaign per
    tripped remedy campaign (``parent_campaign_id``): the plan's rollback release sent to the
    cars of the tripped wave that had installed the bad release.
    """

    __tablename__ = "campaigns"
    __table_args__ = (
        Index(
            "uq_campaigns_recall_remedy",
            "recall_id",
            unique=True,
            sqlite_where=text("kind = 'remedy'"),
            postgresql_where=text("kind = 'remedy'"),
        ),
        UniqueConstraint("parent_campaign_id", name="uq_campaigns_parent"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    recall_id: Mapped[int] = mapped_column(ForeignKey("recalls.id"))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    population: Mapped[int] = mapped_column(Integer)
    launched_at: Mapped[datetime]
    # The count frozen at launch (``population`` grows only in a dynamic campaign).
    launch_population: Mapped[int | None] = mapped_column(Integer)
    # active, paused, cancelled or completed; the reason says who or which gate decided it.
    # active_history: the old status is loaded before a change, so the change's event (ota_server.events) knows it
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active", active_history=True)
    status_reason: Mapped[str | None] = mapped_column(Text)
    current_wave: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Errors of the open wave an operator accepted by resuming after an automatic pause.
    error_baseline: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    status_changed_at: Mapped[datetime | None]
    # "remedy" (the recall's fix) or "rollback" (launched by a tripped error threshold).
    kind: Mapped[str] = mapped_column(String(16), default="remedy", server_default="remedy")
    parent_campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaigns.id", name="fk_campaigns_parent_campaign_id")
    )


class CampaignVehicle(Base):
    """Current state of one car in one campaign; ``attempt`` 0 means still pending.

    ``(attempt, deferrals, progress_rank)`` is the progress key of the last accepted car
    report: a report moves the car only to a greater key. ``notified_at`` is when the
    scheduler issued the current notice (None: not yet, e.g. a later wave).
    """

    __tablename__ = "campaign_vehicles"
    __table_args__ = (
        Index("ix_campaign_vehicles_campaign_state", "campaign_id", "state"),
        # a car's rows in every campaign (manifests in ingest, the VIN page): the key leads with the campaign
        Index("ix_campaign_vehicles_vin", "vin"),
        # the cars still waiting for their first notice, in the notifier's order (migration 0021)
        Index(
            "ix_campaign_vehicles_waiting",
            "campaign_id",
            "wave",
            "vin",
            sqlite_where=text("state = 'pending' AND notified_at IS NULL"),
            postgresql_where=text("state = 'pending' AND notified_at IS NULL"),
        ),
    )

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), default="pending")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
    notice_published_at: Mapped[datetime | None]
    wave: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    deferrals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    progress_rank: Mapped[int] = mapped_column(Integer, default=-1, server_default="-1")
    notified_at: Mapped[datetime | None]
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_retry_at: Mapped[datetime | None]
    # Operator records (dealer remedy, inspection, unreachable): who, and a reference to the evidence.
    recorded_by: Mapped[str | None] = mapped_column(String(64))
    evidence_ref: Mapped[str | None] = mapped_column(String(200))
    # The ECU the car's failure report names in its ecu_serial (None: no failure, or an older agent).
    failed_ecu: Mapped[str | None] = mapped_column(String(64))


class CampaignEcu(Base):
    """One affected ECU of one car in a campaign, frozen with the car: which release it installs.

    A car's outcome is its ECUs' outcome (the car installs them all or none); progress counts
    ECUs by hardware id from these rows and the car's state.
    """

    __tablename__ = "campaign_ecus"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    ecu_serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(64))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))


class CampaignEvent(Base):
    __tablename__ = "campaign_events"
    __table_args__ = (
        UniqueConstraint("campaign_id", "vin", "attempt", "deferrals", "state", name="uq_campaign_events_step"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    vin: Mapped[str] = mapped_column(String(17), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    deferrals: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime]
    # car (a signed report), operator, timeout, cancel or retry
    source: Mapped[str] = mapped_column(String(16), default="car", server_default="car")


class NoticeLog(Base):
    """The owner-notification log: every notice and withdrawal the broker accepted, per VIN."""

    __tablename__ = "notice_log"
    __table_args__ = (Index("ix_notice_log_campaign_vin", "campaign_id", "vin"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    vin: Mapped[str] = mapped_column(String(17))
    kind: Mapped[str] = mapped_column(String(16))  # campaign (a notice) or withdrawal
    nonce: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    published_at: Mapped[datetime]


class OwnerNotification(Base):
    """What an owner was told, when, through which channel: the log a regulator may ask for.

    One row per notice, reminder, withdrawal, consent request or answer, and owner letter
    (:mod:`ota_server.services.owner_notifications` writes it). ``text`` is the full text the
    owner was shown ('' when only its hash is kept); ``text_sha256`` always holds its hash.
    ``notice_log`` stays the broker's record (nonces, payloads) of the MQTT messages.
    """

    __tablename__ = "owner_notifications"
    __table_args__ = (
        Index("ix_owner_notifications_recall", "recall_id", "id"),
        Index("ix_owner_notifications_vin", "vin", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    recall_id: Mapped[int] = mapped_column(ForeignKey("recalls.id", ondelete="CASCADE"))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    vin: Mapped[str] = mapped_column(String(17))
    kind: Mapped[str] = mapped_column(String(24))  # notice, reminder, withdrawal, consent_*, letter
    channel: Mapped[str] = mapped_column(String(16))  # mqtt, letter, email, owner_page, head_unit, cli
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(String(200), default="", server_default="")
    at: Mapped[datetime]  # when the owner was told (a letter's date of mailing)
    recorded_at: Mapped[datetime]
    recorded_by: Mapped[str] = mapped_column(String(200), default="", server_default="")


class RepoFile(Base):
    """Signed TUF metadata, stored so restarts and replicas serve the same bytes.

    ``repo`` is ``image`` or ``director``; ``owner`` is ``""`` for repository-wide
    files (the roots) and the VIN for the Director's per-vehicle chain.
    """

    __tablename__ = "repo_files"

    repo: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(17), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime]


class ApiToken(Base):
    """An API token: only the sha256 of the secret is kept; ``name`` is the person it belongs to.

    ``person`` is the name normalised (:func:`ota_server.roles.person_key`) and
    ``created_by_token_id`` the token that created this one (None for the bootstrap token):
    the two-person rule compares persons and follows who created whom.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    person: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(64))
    created_by_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class LaunchRequest(Base):
    """A safety recall's launch, asked for by one person and approved by another."""

    __tablename__ = "launch_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    recall_id: Mapped[int] = mapped_column(ForeignKey("recalls.id"), unique=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    # The token the request came with (its creator matters to the two-person rule).
    requested_by_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    requested_at: Mapped[datetime]
    approved_by: Mapped[str | None] = mapped_column(String(64))
    approved_at: Mapped[datetime | None]


class AuditEntry(Base):
    """One operator action; ``hash`` = sha256(previous hash + this entry's canonical JSON)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(255))
    target: Mapped[dict[str, Any]]
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's single head row; updating it first serialises appends across threads and replicas."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class Lease(Base):
    """Who runs a periodic job (scheduler tick, re-signing) until when; see :mod:`ota_server.infra.leases`."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    acquired_at: Mapped[datetime]


class EcuReport(Base):
    """The inventory's history: one row per ECU per accepted version manifest."""

    __tablename__ = "ecu_reports"
    __table_args__ = (Index("ix_ecu_reports_vin_received", "vin", "received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    vin: Mapped[str] = mapped_column(String(17))
    ecu_serial: Mapped[str] = mapped_column(String(64))
    hardware_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(64))
    release_counter: Mapped[int | None] = mapped_column(Integer)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    image_length: Mapped[int | None] = mapped_column(BigInteger)
    target_path: Mapped[str | None] = mapped_column(String(255))
    manifest_counter: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(16))  # start, install, rollback, daily, requested
    sent_at: Mapped[datetime]  # the car's clock, for the record only
    received_at: Mapped[datetime]  # the server's clock: what the inventory goes by


class Discrepancy(Base):
    """Where the car's signed word and the service's record disagree (tampering, a workshop flash).

    ``kind``: ``unassigned_image`` (an image hash no release of the ECU's hardware has),
    ``unknown_version`` (no release of its hardware and not its declared factory version),
    ``remedied_mismatch`` (a campaign says remedied, the manifest shows another version),
    ``hardware_mismatch`` or ``unknown_ecu`` (the manifest does not match the registration).
    The same finding on one ECU is stored once (``last_seen_at`` moves on).
    """

    __tablename__ = "discrepancies"
    __table_args__ = (Index("ix_discrepancies_vin", "vin"), Index("ix_discrepancies_kind", "kind"))

    id: Mapped[int] = mapped_column(primary_key=True)
    vin: Mapped[str] = mapped_column(String(17))
    ecu_serial: Mapped[str] = mapped_column(String(64))
    hardware_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64))
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"))
    detail: Mapped[str] = mapped_column(Text)
    manifest_counter: Mapped[int] = mapped_column(BigInteger)
    found_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]


class VehicleTag(Base):
    """An operator's label on a car (lower case, see ``services/groups.py``); saved groups filter on them."""

    __tablename__ = "vehicle_tags"
    __table_args__ = (Index("ix_vehicle_tags_tag", "tag", "vehicle_id"),)

    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200), default="")


class VehicleGroup(Base):
    """A saved, named filter over the fleet (``schemas.groups.GroupFilter`` as JSON); its cars are
    computed when read. ``name_key`` (the name case-folded) keeps names unique whatever their case."""

    __tablename__ = "vehicle_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    name_key: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    filter: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200), default="")


class Webhook(Base):
    """An operator's receiver of server events (``docs/webhooks.md``): its URL, the event types it
    wants (null: all) and the HMAC secret its deliveries are signed with. ``status`` is ``active``
    or ``paused`` (a dead endpoint, until an operator resumes it); ``failing_since`` and
    ``consecutive_failures`` count its current run of failed deliveries."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str] | None] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="active")
    paused_reason: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    failing_since: Mapped[datetime | None]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200), default="")


class OutboxEvent(Base):
    """One server event (``ota_server.events``), written in the transaction of the change that caused
    it; ``fanned_out`` once a delivery row exists for each webhook that wanted it."""

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_events_pending", "fanned_out", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    fanned_out: Mapped[bool] = mapped_column(Boolean, default=False)


class WebhookDelivery(Base):
    """One event to one webhook; its id is the ``X-OTA-Delivery`` header, the same on every attempt.
    ``status``: ``pending`` (due at ``next_attempt_at``), ``delivered`` or ``failed`` (no retry)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox_events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
