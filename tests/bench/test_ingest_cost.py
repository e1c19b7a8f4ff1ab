"""`bench.ingest_cost`: ingest alone on PostgreSQL, lone reports against report batches."""

from __future__ import annotations

import pytest

from bench import ingest_cost
from tests import services


@pytest.mark.services
async def test_both_modes_remedy_every_car_and_batches_write_fewer_rows() -> None:
    services.need("PostgreSQL", services.POSTGRES_HOST, services.POSTGRES_PORT)
    lone = await ingest_cost.measure("lone", 12)
    batch = await ingest_cost.measure("batch", 12)
    for result in (lone, batch):
        assert (result.accepted, result.remedied) == (6 * 12, 12)
        assert result.server_cpu_ms_per_car > 0
    assert (lone.messages, batch.messages) == (6 * 12, 12)
    # a batch's car: its 6 events, its row once, its last_seen once
    assert batch.rows_per_car == 8
