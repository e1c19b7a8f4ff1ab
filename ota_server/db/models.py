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
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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

    ecus: Mapped[list[Ecu]] = relationship(
        back_populates="vehicle", order_by="Ecu.id", lazy="selectin", cascade="all, delete-orphan"
    )


class Ecu(Base):
    __tablename__ = "ecus"
    __table_args__ = (UniqueConstraint("vehicle_id", "serial", name="uq_ecus_vehicle_serial"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"), index=True)
    serial: Mapped[str] = mapped_column(String(64))
    hardware_id: Mapped[str] = mapped_column(String(64), index=True)
    installed_version: Mapped[str] = mapped_column(String(64))
    primary: Mapped[bool] = mapped_column(Boolean, default=False)

    vehicle: Mapped[Vehicle] = relationship(back_populates="ecus")


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


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    recall_id: Mapped[int] = mapped_column(ForeignKey("recalls.id"), unique=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    population: Mapped[int] = mapped_column(Integer)
    launched_at: Mapped[datetime]


class CampaignVehicle(Base):
    """Current state of one car in one campaign; ``attempt`` 0 means still pending."""

    __tablename__ = "campaign_vehicles"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
    notice_published_at: Mapped[datetime | None]


class CampaignEvent(Base):
    __tablename__ = "campaign_events"
    __table_args__ = (UniqueConstraint("campaign_id", "vin", "attempt", "state", name="uq_campaign_events_step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    vin: Mapped[str] = mapped_column(String(17), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime]


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
