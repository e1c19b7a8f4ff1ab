"""Server-sent events: a snapshot whenever something changed, a heartbeat otherwise.

:func:`snapshot_events` is transport-free (callables in, text out), so its rules are
tested without a socket: it asks the cheap ``fingerprint`` every ``interval`` and builds a
``snapshot`` only when the fingerprint moved, sends a comment line as a heartbeat when it
has been quiet for ``heartbeat`` seconds, stops when the client is gone, and ends the
response after ``lifetime`` seconds: the browser's ``EventSource`` reconnects by itself
(after ``retry`` ms), which also re-checks the token, so a revoked one stops streaming.

:class:`EventStreams` ends every open stream when the server stops: uvicorn's graceful stop
waits for each response to finish, and a stream never finishes by itself, so without it a
stop waited out the whole graceful timeout and then cancelled the streams (an ERROR with a
traceback in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

RETRY_MS = 2000


class EventStreams:
    """The server's open event streams, told at once when it stops (one per app)."""

    def __init__(self) -> None:
        self._closing = asyncio.Event()

    def close_all(self) -> None:
        """End every stream at its next step; a sleeping one wakes now."""
        self._closing.set()

    def closing(self) -> bool:
        return self._closing.is_set()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the server stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)


def event(name: str, data: str, event_id: int | None = None) -> str:
    """One SSE message; ``data`` must be a single line (compact JSON is)."""
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head + f"data: {data}\n\n"


async def snapshot_events(
    fingerprint: Callable[[], Awaitable[object]],
    snapshot: Callable[[], Awaitable[str]],
    is_disconnected: Callable[[], Awaitable[bool]],
    *,
    interval: float = 1.0,
    heartbeat: float = 15.0,
    lifetime: float = 300.0,
    max_events: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    closing: Callable[[], bool] = lambda: False,
) -> AsyncIterator[str]:
    started = quiet_since = monotonic()
    yield f"retry: {RETRY_MS}\n\n"
    last: object = None
    sent = 0
    while not closing() and not await is_disconnected():
        current = await fingerprint()
        now = monotonic()
        if sent == 0 or current != last:
            data = await snapshot()
            last = current
            sent += 1
            quiet_since = now
            yield event("snapshot", data, sent)
            if max_events is not None and sent >= max_events:
                return
        elif now - quiet_since >= heartbeat:
            quiet_since = now
            yield ": heartbeat\n\n"
        if now - started >= lifetime:
            return
        await sleep(interval)
