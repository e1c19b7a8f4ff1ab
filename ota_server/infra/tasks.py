"""Stopping a background task: the one cancel-and-wait block the server's loops share."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has ended; None (never started) is a no-op.

    The task's own cancellation is expected and swallowed; any other exception it ends with
    is raised here, so a loop that crashed is not mistaken for one that stopped.
    """
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
