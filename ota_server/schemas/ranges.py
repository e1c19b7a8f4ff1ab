"""Inclusive ranges a population or a saved group filters by (model years, VINs, dates, versions)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ota_server.schemas.common import INPUT_MODEL, ProductionDate, Text


class YearRange(BaseModel):
    model_config = INPUT_MODEL
    min: int | None = Field(default=None, ge=0, le=9999)
    max: int | None = Field(default=None, ge=0, le=9999)


class VinRange(BaseModel):
    model_config = INPUT_MODEL
    first: Text = Field(max_length=17)
    last: Text = Field(max_length=17)


class DateRange(BaseModel):
    model_config = INPUT_MODEL
    start: ProductionDate | None = None
    end: ProductionDate | None = None


class VersionRange(BaseModel):
    model_config = INPUT_MODEL
    min: Text | None = Field(default=None, max_length=64)
    max: Text | None = Field(default=None, max_length=64)
