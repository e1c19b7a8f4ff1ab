"""Inclusive ranges a population or a saved group filters by (model years, VINs, dates, versions)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ota_server.schemas.common import INPUT_MODEL, ProductionDate, Text


class YearRange(BaseModel):
    model_config = INPUT_MODEL
    min: int | None = Field(default=None, ge=0, le=9999)
    max: int | None = Field(default=None, ge=0, le=9999)


VIN_ORDER = (
    "VIN order: positions 1-8, then 10-17; position 9 (the check digit, different on every car) is not "
    "compared, so a range of serials holds those serials only"
)


class VinRange(BaseModel):
    """Inclusive, in VIN order (``firmware_bundles.vin.vin_order``); first after last is a 422."""

    model_config = INPUT_MODEL
    first: Text = Field(max_length=17, description=f"The first VIN of the range (inclusive). {VIN_ORDER}.")
    last: Text = Field(max_length=17, description=f"The last VIN of the range (inclusive). {VIN_ORDER}.")


class DateRange(BaseModel):
    model_config = INPUT_MODEL
    start: ProductionDate | None = None
    end: ProductionDate | None = None


class VersionRange(BaseModel):
    model_config = INPUT_MODEL
    min: Text | None = Field(default=None, max_length=64)
    max: Text | None = Field(default=None, max_length=64)
