"""Shared field types and rules: VIN and text shapes, production dates, the error body."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import normalize_vin, validate_vin
from ota_server.domain.rollout_plan import filing

INPUT_MODEL = ConfigDict(extra="forbid")
RemedyType = Literal["ota", "dealer", "both"]
EcuFailurePolicy = Literal["all_or_nothing", "keep_successful"]
OperatorOutcome = Literal["remedied_at_dealer", "inspected_not_needed", "unreachable"]
OUTPUT_MODEL = ConfigDict(from_attributes=True)
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


def campaign_number_shape(value: str) -> str:
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

# A vehicle model's name as the fleet stores it (vehicles.model): the population filters name models the same way.
ModelName = Annotated[Text, Field(min_length=1, max_length=64)]
MAX_POPULATION_MODELS = 32

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


class ErrorBody(BaseModel):
    """Every error answer's body (401 to 503): one sentence, or several joined by '; ' for a 422."""

    detail: str = Field(description="What is wrong, in words a person can act on")
