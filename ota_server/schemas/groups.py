"""Vehicle tags and saved groups (named filters over the fleet whose cars are counted when read)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field

from ota_server.schemas.common import (
    INPUT_MODEL,
    MAX_POPULATION_MODELS,
    OUTPUT_MODEL,
    ModelName,
    Text,
    Vin,
    text_problem,
)
from ota_server.schemas.listing import Page
from ota_server.schemas.ranges import DateRange, VersionRange, VinRange, YearRange

# A tag: 1-32 letters, digits, '.', '_', ':' or '-', starting with a letter or digit; stored in lower case.
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,31}$"
TAG_RULE = (
    "1-32 characters: letters, digits, '.', '_', ':' or '-', starting with a letter or digit "
    "(stored in lower case: Fleet-A and fleet-a are one tag)"
)
_TAG_RE = re.compile(TAG_PATTERN)
# A group's name: no control characters and no '/' (the name is part of the group's address).
GROUP_NAME_PATTERN = r"^[^\x00-\x1f\x7f/]+$"
_NOT_NAME_RE = re.compile(r"[\x00-\x1f\x7f/]")
MAX_TAGS_PER_VEHICLE = 32
MAX_TAG_BATCH = 1000  # VINs one bulk tagging request may name
MAX_FILTER_TAGS = 16


def tag_shape(value: str) -> str:
    """``value`` in lower case, or ValueError saying what a tag may hold."""
    if _TAG_RE.fullmatch(value) is None:
        raise ValueError(f"tag {value[:40]!r} is not a tag: give {TAG_RULE}")
    return value.lower()


Tag = Annotated[str, AfterValidator(tag_shape), Field(description=TAG_RULE, json_schema_extra={"pattern": TAG_PATTERN})]


def group_name_shape(value: str) -> str:
    """``value`` if it can name a group (or be looked up as one), else ValueError saying why."""
    bad = _NOT_NAME_RE.search(value)
    if bad is not None:
        where = f"U+{ord(bad.group()):04X} at position {bad.start()}"
        raise ValueError(f"contains {where}: a group's name has no control characters and no '/'")
    if (problem := text_problem(value)) is not None:
        raise ValueError(problem)
    return value


GroupName = Annotated[
    str,
    AfterValidator(group_name_shape),
    Field(min_length=1, max_length=64, json_schema_extra={"pattern": GROUP_NAME_PATTERN}),
]


class TagBatch(BaseModel):
    """One tag put on (or taken off) many cars at once; every VIN must be registered."""

    model_config = INPUT_MODEL
    tag: Tag
    vins: list[Vin] = Field(min_length=1, max_length=MAX_TAG_BATCH)


class TagBatchResult(BaseModel):
    tag: str
    changed: int = Field(description="Cars that got (or lost) the tag now")
    unchanged: int = Field(description="Cars that had it already (or did not have it)")


class GroupVersions(VersionRange):
    """Inclusive bounds (PEP 440) on a version some ECU of the car runs."""

    hardware_id: Text | None = Field(default=None, max_length=64, description="Only ECUs of this hardware id")
    basis: Literal["installed", "reported", "declared"] = Field(
        default="installed",
        description="installed: the car's last signed version manifest, the registered version until it sent one "
        "(what recall populations use); reported: only ECUs a signed manifest spoke for; declared: the version "
        "declared at registration",
    )


class GroupFilter(BaseModel):
    """Every filter given must hold (an AND); cars out of the fleet (decommissioned) are never members."""

    model_config = INPUT_MODEL
    models: list[ModelName] | None = Field(default=None, min_length=1, max_length=MAX_POPULATION_MODELS)
    model_years: YearRange | None = None
    vin_range: VinRange | None = None
    production_dates: DateRange | None = None
    tags_all: list[Tag] | None = Field(
        default=None, min_length=1, max_length=MAX_FILTER_TAGS, description="The car has every one of these tags"
    )
    tags_any: list[Tag] | None = Field(
        default=None, min_length=1, max_length=MAX_FILTER_TAGS, description="The car has at least one of these tags"
    )
    installed_versions: GroupVersions | None = None


class GroupCreate(BaseModel):
    model_config = INPUT_MODEL
    name: GroupName = Field(
        description="Unique whatever the case; not only digits (a recall names a group by its name or its id); "
        "no control characters or '/'",
    )
    description: Text = Field(default="", max_length=2000)
    filter: GroupFilter = Field(default_factory=GroupFilter)


class GroupPublic(BaseModel):
    model_config = OUTPUT_MODEL
    id: int
    name: str
    description: str
    filter: GroupFilter
    vehicle_count: int = Field(description="Cars the filter matches now (computed when read)")
    created_at: datetime
    created_by: str


GroupPage = Page[GroupPublic]
