"""The integrations that matter for real: PostgreSQL and Mosquitto (skip locally, fail in CI)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from firmware_bundles.messages import FailureReason, ReportState
from firmware_bundles.vin import make_vin
from ota_server.config import Settings
from ota_server.http.server import OtaServer
from tests.ota_server.conftest import make_settings, running
from tests.ota_server.helpers import launched, remedied, report, vin
from tests.ota_server.mqtt_flow import one_recall

pytestmark = pytest.mark.services


def random_vin() -> str:
    return make_vin("5YJ", "SA1E2", "N", "F", random.randrange(1_000_000))


async def test_launch_and_ingest_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        vins = [vin(n) for n in range(1, 21)]
        cid = (await launched(env.client, vins))["id"]
        nonces = await env.nonces()
        await env.inject(*(report(cid, v, nonces[v], ReportState.DOWNLOADING) for v in vins))
        await env.inject(*(report(cid, v, nonces[v], ReportState.DOWNLOADING) for v in vins[:5]))  # duplicates
        await env.inject(*(remedied(cid, v, nonces[v]) for v in vins[:15]))
        await env.inject(
            *(report(cid, v, nonces[v], ReportState.FAILED, reason=FailureReason.HASH_MISMATCH) for v in vins[15:])
        )
        progress = (await env.client.get(f"/api/v1/campaigns/{cid}/progress")).json()
        assert progress["counts"]["remedied"] == 15 and progress["counts"]["failed"] == 5
        assert sum(progress["counts"].values()) == 20 and progress["done"]
        stats = (await env.client.get("/api/v1/stats/ingest")).json()
        assert stats["duplicates"] == 5 and stats["accepted"] == 40
        director = await env.client.get(f"/repo/director/{vins[0]}/metadata/targets.json")
        assert director.status_code == 200 and vins[0].encode() in director.content
    # a restart on the same database upgrades nothing and serves the same root
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        assert (await env.client.get(f"/api/v1/vehicles/{vins[0]}")).status_code == 200


async def test_recall_over_mosquitto_and_postgres(tmp_path: Path, postgres_url: str, mosquitto_url: str) -> None:
    settings = Settings(
        data_dir=tmp_path,
        port=0,
        database_url=postgres_url,
        mqtt_url=mosquitto_url,
        mqtt_client_id=f"ota-server-test-{uuid.uuid4().hex[:10]}",
        mqtt_clean_session=True,
    )
    async with OtaServer(settings) as info:
        token = settings.admin_token_file.read_text().strip()
        number = f"24V-{random.randrange(100000):05d}"
        progress = await one_recall(info.api_url, info.mqtt_url, random_vin(), number, token=token)
    assert progress["counts"]["remedied"] == 1
