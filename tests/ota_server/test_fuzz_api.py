"""The REST API fuzzed from its own OpenAPI schema (schemathesis), in-process.

Every generated request, valid-looking or deliberately broken, must get an answer
below 500, and a request the API refuses (4xx) must leave every table except the
audit log exactly as it was. SQLite in tmp_path, a FakePublisher, an admin token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi
from sqlalchemy import Engine, MetaData, select

from ota_server.http.app import create_app, runtime_of
from ota_server.mqtt.publisher import FakePublisher
from tests.ota_server.conftest import make_settings
from tests.ota_server.helpers import FakeClock

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

AUDIT_TABLES = frozenset({"audit_log", "audit_head"})
EXAMPLES = 300  # per generation mode; keeps the whole file well under a minute


@pytest.fixture
def fuzzed_app(tmp_path: Path) -> Iterator[FastAPI]:
    app = create_app(make_settings(tmp_path, rate_limit_per_s=0), publisher=FakePublisher(), clock=FakeClock())
    yield app
    asgi.shutdown_lifespans()  # schemathesis started the lifespan with its first request


def snapshot(engine: Engine, metadata: MetaData) -> dict[str, str]:
    """A digest of every row of every table but the audit log's (which records refusals too)."""
    digests = {}
    with engine.connect() as connection:
        for name, table in sorted(metadata.tables.items()):
            if name in AUDIT_TABLES:
                continue
            rows = connection.execute(select(table).order_by(*table.primary_key.columns)).all()
            digests[name] = hashlib.sha256(repr(rows).encode()).hexdigest()
    return digests


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schema_fuzz_never_5xx_and_refusals_store_nothing(fuzzed_app: FastAPI, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    runtime = runtime_of(fuzzed_app)
    token = runtime.settings.admin_token_file.read_text().strip()
    metadata = MetaData()
    metadata.reflect(runtime.engine)
    strategy = schema.as_strategy(generation_mode=mode, headers={"Authorization": f"Bearer {token}"})

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def one_request(case: OpenApiCase) -> None:
        before = snapshot(runtime.engine, metadata)
        bundles_before = sorted(runtime.settings.bundles_dir.glob("*"))
        response = case.call()
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
        if response.status_code >= 400:
            assert snapshot(runtime.engine, metadata) == before, f"{case.method} {case.formatted_path} stored something"
            assert sorted(runtime.settings.bundles_dir.glob("*")) == bundles_before

    one_request()
