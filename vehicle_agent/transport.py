"""The network behind one tiny interface: stream the bytes of a URL.

:class:`HttpxTransport` wraps a synchronous ``httpx.Client`` that many agents may
share (the simulator runs thousands in one process); :class:`MemoryTransport` serves
an in-memory repository for tests and simulated fleets. :class:`TufFetcher` adapts
either one to python-tuf's ``FetcherInterface``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import httpx
from tuf.api import exceptions as tuf_exceptions
from tuf.ngclient import FetcherInterface

from vehicle_agent.config import DownloadLimits
from vehicle_agent.errors import FetchError


class Chunks(Iterator[bytes]):
    """The body's chunks, and the offset of the first one: what the server actually sent.

    Asked to start at ``N``, a server may honour the range (``start == N``) or send
    the whole file again (``start == 0``); the fetcher handles both.
    """

    def __init__(self, chunks: Iterator[bytes], start: int = 0) -> None:
        self._chunks = chunks
        self.start = start

    def __next__(self) -> bytes:
        return next(self._chunks)


class Transport(Protocol):
    def stream(self, url: str, *, start: int = 0) -> AbstractContextManager[Chunks]:
        """Yield the body of ``url`` from byte ``start`` (HTTP Range) in chunks.

        Raise :class:`FetchError` (with the status on HTTP errors).
        """
        ...


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def range_start(url: str, status: int, content_range: str | None) -> int:
    """Where a body starts, from a 206's Content-Range; 0 for a whole body."""
    if status != 206:
        return 0
    match = _CONTENT_RANGE.match(content_range or "")
    if match is None:
        raise FetchError(url, f"206 with a malformed Content-Range {content_range!r}")
    return int(match.group(1))


ERROR_BODY_LIMIT = 64 * 1024


def _drain(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> None:
    """Read a small error body so the kept-alive connection can be reused (TUF's root probe is a
    404 for every car); past ``limit`` bytes stop, and the connection is closed instead."""
    seen = 0
    try:
        for chunk in response.iter_raw():
            seen += len(chunk)
            if seen > limit:
                return
    except (httpx.StreamError, httpx.TransportError):  # already read, or cut: nothing to keep
        return


class _NoCookies(httpx.Cookies):
    """A cookie jar that stays empty: the repositories set no cookies and the agent sends none.

    httpx has no switch for cookies, and parsing every answer for ``Set-Cookie`` (through
    urllib's cookie machinery) was a measurable share of a request's CPU in the simulator.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class AgentHttpClient(httpx.Client):
    """``httpx.Client`` without cookies (see :class:`_NoCookies`); otherwise unchanged."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: httpx._types.CookieTypes) -> None:
        raise TypeError("the agent's HTTP client keeps no cookies")


_NO_COOKIES = _NoCookies()


def make_http_client(
    limits: DownloadLimits | None = None, *, max_connections: int = 100, max_keepalive: int | None = None
) -> httpx.Client:
    """A client sized for sharing; timeouts are per operation, the fetcher enforces the total.

    ``max_keepalive`` idle connections are kept (default: ``max_connections``).
    """
    limits = limits or DownloadLimits()
    timeout = httpx.Timeout(limits.read_timeout, connect=limits.connect_timeout)
    keep = max_connections if max_keepalive is None else min(max_keepalive, max_connections)
    return AgentHttpClient(
        timeout=timeout,
        # Kept alive for a minute (httpx's default is 5 s): a campaign's fetches come minutes
        # apart under load, and the server keeps connections 75 s.
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=keep, keepalive_expiry=60.0),
        # A repository may hand bundles out from an object store (a 307): what comes back is
        # checked against the signed length and hashes wherever it came from.
        follow_redirects=True,
        max_redirects=5,
    )


class HttpxTransport:
    """Streams with a (possibly shared) ``httpx.Client``; the caller owns and closes the client."""

    def __init__(self, client: httpx.Client, *, chunk_size: int = 64 * 1024) -> None:
        self._client = client
        self._chunk_size = chunk_size

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        headers = {"Range": f"bytes={start}-"} if start > 0 else None
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    _drain(response)  # a read answer keeps the connection for the next request
                    raise FetchError(url, f"HTTP {response.status_code}", response.status_code)
                yield Chunks(
                    self._chunks(url, response),
                    range_start(url, response.status_code, response.headers.get("content-range")),
                )
        except httpx.HTTPError as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}") from exc

    def _chunks(self, url: str, response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_bytes(self._chunk_size)
        except httpx.HTTPError as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}") from exc


# A thread's own client: one request at a time, so one connection to the repository (and
# one to an object store a bundle may be redirected to). The spare ones are for a stream a
# failed caller left open until it is collected: it must not make the next request wait.
THREAD_CONNECTIONS = 4
THREAD_KEEPALIVE = 2


class PerThreadTransport:
    """An :class:`HttpxTransport` per thread, each over its own small client made on first use.

    Thousands of cars on a few worker threads sharing ONE pool paid, on every request, for
    a scan of every pooled connection under the pool's lock, and for the lock's contention
    between threads. A client per thread keeps one connection alive per thread instead,
    with the same timeouts, redirects, Range requests and keep-alive expiry. :meth:`close`
    closes every client made so far; the owner calls it once the threads are done.
    """

    def __init__(self, factory: Callable[[], httpx.Client] | None = None, *, chunk_size: int = 64 * 1024) -> None:
        self._factory = factory or (
            lambda: make_http_client(max_connections=THREAD_CONNECTIONS, max_keepalive=THREAD_KEEPALIVE)
        )
        self._chunk_size = chunk_size
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def clients(self) -> int:
        """How many clients (threads that made a request) there are."""
        return len(self._clients)

    def _transport(self) -> HttpxTransport:
        transport: HttpxTransport | None = getattr(self._local, "transport", None)
        if transport is None:
            client = self._factory()
            with self._lock:
                if self._closed:
                    client.close()
                    raise RuntimeError("the transport is closed")
                self._clients.append(client)
            transport = self._local.transport = HttpxTransport(client, chunk_size=self._chunk_size)
        return transport

    def stream(self, url: str, *, start: int = 0) -> AbstractContextManager[Chunks]:
        return self._transport().stream(url, start=start)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()


Body = bytes | Callable[[], Iterator[bytes]]


class MemoryTransport:
    """URL to bytes (or to a chunk generator, e.g. endless data); a missing URL answers 404.

    Thread-safe for reads while tests or a simulated server swap files between steps.
    """

    def __init__(self, files: dict[str, Body] | None = None, *, chunk_size: int = 16 * 1024) -> None:
        self.files: dict[str, Body] = dict(files or {})
        self.requests: list[str] = []
        self.starts: list[int] = []  # the range start of each request, in order
        self.sent: dict[str, int] = {}  # bytes served per URL (what a data plan pays for)
        self.offline = False
        self.honour_ranges = True  # False: answer every range with the whole file, as some servers do
        self._chunk_size = chunk_size
        self._lock = threading.Lock()

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        with self._lock:
            self.requests.append(url)
            self.starts.append(start)
            body = self.files.get(url)
        if self.offline:
            raise FetchError(url, "network unreachable")
        if body is None:
            raise FetchError(url, "HTTP 404", 404)
        if not isinstance(body, bytes):
            yield Chunks(body())  # a generator (e.g. endless data) always starts at 0
            return
        data = body
        if not self.honour_ranges:
            start = 0
        if start > len(data):
            raise FetchError(url, "HTTP 416", 416)
        yield Chunks(self._count(url, data, start), start)

    def _count(self, url: str, data: bytes, start: int) -> Iterator[bytes]:
        for i in range(start, len(data), self._chunk_size):
            chunk = data[i : i + self._chunk_size]
            with self._lock:
                self.sent[url] = self.sent.get(url, 0) + len(chunk)
            yield chunk


class TufFetcher(FetcherInterface):
    """python-tuf's fetcher on top of a :class:`Transport`, with TUF's error types.

    python-tuf caps each metadata file's length (endless data) but not its duration, so
    a mirror trickling a timestamp one byte a minute would hold a car for days. The same
    guard as the bundle fetcher's applies here: a per-file deadline and a floor on the
    average speed over each window, on an injectable clock, raising python-tuf's own
    ``SlowRetrievalError``.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        limits: DownloadLimits | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._limits = limits or DownloadLimits()
        self._monotonic = monotonic

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._generate(url)

    def _generate(self, url: str) -> Iterator[bytes]:
        # A generator body runs inside TUF's download loop, outside fetch()'s wrapping,
        # so errors are translated here; TUF needs the status to treat 404 as "no newer root".
        try:
            with self._transport.stream(url) as chunks:
                yield from self._guarded(url, chunks)
        except FetchError as exc:
            if exc.status is not None:
                raise tuf_exceptions.DownloadHTTPError(str(exc), exc.status) from exc
            raise tuf_exceptions.DownloadError(str(exc)) from exc

    def _guarded(self, url: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        limits = self._limits
        started = window_start = self._monotonic()
        received = 0
        for chunk in chunks:
            now = self._monotonic()
            if now - started > limits.metadata_timeout:
                raise tuf_exceptions.SlowRetrievalError(f"{url}: not complete after {limits.metadata_timeout:g} s")
            received += len(chunk)
            elapsed = now - window_start
            if elapsed >= limits.speed_window:
                if received / elapsed < limits.min_bytes_per_second:
                    raise tuf_exceptions.SlowRetrievalError(
                        f"{url}: {received / elapsed:.1f} B/s over {elapsed:g} s, "
                        f"below the floor of {limits.min_bytes_per_second:g} B/s"
                    )
                window_start, received = now, 0
            yield chunk
