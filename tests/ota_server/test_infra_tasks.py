"""ota_server.infra.tasks.stop_task: the shared cancel-and-wait block."""

from __future__ import annotations

import asyncio

import pytest

from ota_server.infra.tasks import stop_task


async def test_a_running_task_is_cancelled_and_awaited() -> None:
    cleaned = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await stop_task(task)
    assert task.cancelled()
    assert cleaned.is_set()


async def test_none_is_a_no_op() -> None:
    await stop_task(None)


async def test_a_task_that_crashed_raises_its_error() -> None:
    async def broken() -> None:
        raise ValueError("the loop's own failure")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="own failure"):
        await stop_task(task)
