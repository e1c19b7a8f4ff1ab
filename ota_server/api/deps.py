"""Request dependencies as ``Annotated`` types, so routers stay one-liners."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Path, Request
from pydantic import AfterValidator, BeforeValidator
from sqlalchemy.orm import Session

from ota_server.runtime import Runtime
from ota_server.schemas import VIN_RULE, VIN_SCHEMA, vin_shape


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


# Row ids fit the database's INTEGER (PostgreSQL: 32 bits); a larger one is a 422, not a 500.
MAX_ID = 2**31 - 1
Id = Annotated[int, Path(ge=1, le=MAX_ID)]

# A VIN in a path: the alphabet and length are checked here (422), the check digit by the service.
VinPath = Annotated[str, Path(description=VIN_RULE, json_schema_extra=VIN_SCHEMA), AfterValidator(vin_shape)]


def _iso_instant(value: object) -> object:
    """Only ISO 8601 (pydantic would also read ``0.5`` as seconds after 1970, which no person means)."""
    if isinstance(value, str) and re.match(r"\d{4}-\d{2}-\d{2}", value) is None:
        raise ValueError("give an ISO 8601 date and time, e.g. 2026-03-01T12:00:00Z")
    return value


# A point in time a person sends in a query (no zone: UTC).
Instant = Annotated[datetime, BeforeValidator(_iso_instant)]
