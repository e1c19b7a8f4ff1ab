"""The network behind one tiny interface: stream the bytes of a URL.

:class:`HttpxTransport` wraps a synchronous ``httpx.Client`` that many agents may
share (the simulator runs thousands in one process); :class:`MemoryTransport` serves
an in-memory repository for tests and simulated fleets. :class:`TufFetcher` adapts
either one to python-tuf's ``FetcherInterface``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import httpx
from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient import FetcherInterface

from vehicle_agent.config import DownloadLimits
from vehicle_agent.errors import FetchError


class Transport(Protocol):
    def stream(self, url: str) -> AbstractContextManager[Iterator[bytes]]:
        """Yield the body of ``url`` in chunks; raise :class:`FetchError` (with the status on HTTP errors)."""
        ...


def make_http_client(limits: DownloadLimits | None = None, *, max_connections: int = 100) -> httpx.Client:
    """A client sized for sharing; timeouts are per operation, the fetcher enforces the total."""
    limits = limits or DownloadLimits()
    timeout = httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout)
    return httpx.Client(
        timeout=timeout,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
    )


class HttpxTransport:
    """Streams with a (possibly shared) ``httpx.Client``; the caller owns and closes the client."""

    def __init__(self, client: httpx.Client, *, chunk_size: int = 64 * 1024) -> None:
        self._client = client
        self._chunk_size = chunk_size

    @contextmanager
    def stream(self, url: str) -> Iterator[Iterator[bytes]]:
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise FetchError(url, f"HTTP {response.status_code}", response.status_code)
                yield self._chunks(url, response)
        except httpx.HTTPError as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}") from exc

    def _chunks(self, url: str, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(self._chunk_size)
        except httpx.HTTPError as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}") from exc


Body = bytes | Callable[[], Iterator[bytes]]


class MemoryTransport:
    """URL to bytes (or to a chunk generator, e.g. endless data); a missing URL answers 404.

    Thread-safe for reads while tests or a simulated server swap files between steps.
    """

    def __init__(self, files: dict[str, Body] | None = None, *, chunk_size: int = 16 * 1024) -> None:
        self.files: dict[str, Body] = dict(files or {})
        self.requests: list[str] = []
        self.offline = False
        self._chunk_size = chunk_size
        self._lock = threading.Lock()

    @contextmanager
    def stream(self, url: str) -> Iterator[Iterator[bytes]]:
        with self._lock:
            self.requests.append(url)
            body = self.files.get(url)
        if self.offline:
            raise FetchError(url, "network unreachable")
        if body is None:
            raise FetchError(url, "HTTP 404", 404)
        if isinstance(body, bytes):
            data = body
            yield (data[i : i + self._chunk_size] for i in range(0, len(data), self._chunk_size))
        else:
            yield body()


class TufFetcher(FetcherInterface):
    """python-tuf's fetcher on top of a :class:`Transport`, with TUF's error types."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._generate(url)

    def _generate(self, url: str) -> Iterator[bytes]:
        # A generator body runs inside TUF's download loop, outside fetch()'s wrapping,
        # so errors are translated here; TUF needs the status to treat 404 as "no newer root".
        try:
            with self._transport.stream(url) as chunks:
                yield from chunks
        except FetchError as exc:
            if exc.status is not None:
                raise tuf_exceptions.DownloadHTTPError(str(exc), exc.status) from exc
            raise tuf_exceptions.DownloadError(str(exc)) from exc
