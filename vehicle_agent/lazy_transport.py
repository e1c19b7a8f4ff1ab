"""A transport opened on its first request.

A parked car spends nearly all its life idle; building the HTTP stack (httpx and its
dependencies, several MiB) only when the first campaign arrives keeps the resident
agent small. After that the one underlying transport is reused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vehicle_agent.transport import Chunks, Transport


class LazyTransport:
    """Builds the real :class:`Transport` with ``factory`` on first use (thread-safe)."""

    def __init__(self, factory: Callable[[], Transport], close: Callable[[], None] | None = None) -> None:
        self._factory = factory
        self._close = close
        self._transport: Transport | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        return self._transport is not None

    def stream(self, url: str, *, start: int = 0) -> AbstractContextManager[Chunks]:
        with self._lock:
            if self._transport is None:
                self._transport = self._factory()
            transport = self._transport
        return transport.stream(url, start=start)

    def close(self) -> None:
        if self._transport is not None and self._close is not None:
            self._close()
