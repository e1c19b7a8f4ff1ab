"""The simulated cars' HTTP: the agent's :class:`~vehicle_agent.transport.Transport` over ``http.client``.

A worker process runs thousands of real agents, and their HTTP client was a measurable share
of its CPU: httpx and httpcore spent ~650 µs of Python per metadata request, the standard
library's ``http.client`` ~170 µs (the same 1.5 kB answer from uvicorn on this machine). Only
the simulated car's network stack changes: the agent's own code (TUF's fetcher, the bundle
fetcher, every check on what comes back) runs unchanged on top of this transport, as it does
on top of :class:`~vehicle_agent.transport.HttpxTransport` in a real car.

It keeps what the agent's client does: one kept-alive connection per thread and origin, the
connect and read timeouts of :class:`~vehicle_agent.config.DownloadLimits`, ``Range`` from an
offset (a 206's ``Content-Range`` read by :func:`~vehicle_agent.transport.range_start`),
redirects followed (at most ``MAX_REDIRECTS``, e.g. a bundle handed out by an object store),
a small error body read so the connection is kept, and every failure as a
:class:`~vehicle_agent.errors.FetchError` (with the status for HTTP errors). A kept-alive
connection the server closed meanwhile is replaced and the GET sent again, once.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

from vehicle_agent.config import DownloadLimits
from vehicle_agent.errors import FetchError
from vehicle_agent.transport import ERROR_BODY_LIMIT, Chunks, range_start

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# What a kept-alive connection closed by the server looks like on the next request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_Origin = tuple[str, str, int]


def _origin(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(url, "not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    return (parts.scheme, parts.hostname, port), f"{path}?{parts.query}" if parts.query else path


class StdlibTransport:
    """One ``http.client`` connection per thread and origin; :meth:`close` closes them all."""

    def __init__(self, limits: DownloadLimits | None = None, *, chunk_size: int = 64 * 1024) -> None:
        self._limits = limits or DownloadLimits()
        self._chunk_size = chunk_size
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connections(self) -> dict[_Origin, http.client.HTTPConnection]:
        found: dict[_Origin, http.client.HTTPConnection] | None = getattr(self._local, "connections", None)
        if found is None:
            found = self._local.connections = {}
        return found

    def _connect(self, origin: _Origin) -> http.client.HTTPConnection:
        scheme, host, port = origin
        kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = kind(host, port, timeout=self._limits.connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._limits.read_timeout)
        conn.timeout = self._limits.read_timeout  # a reopen after "Connection: close" (rare) uses this one
        with self._lock:
            if self._closed:
                conn.close()
                raise FetchError(f"{scheme}://{host}:{port}", "the transport is closed")
            self._all.append(conn)
        self._connections()[origin] = conn
        return conn

    def _forget(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        conn.close()
        if self._connections().get(origin) is conn:
            del self._connections()[origin]
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)

    def _get(self, url: str, start: int) -> tuple[_Origin, http.client.HTTPConnection, http.client.HTTPResponse]:
        origin, target = _origin(url)
        headers = {"Range": f"bytes={start}-"} if start > 0 else {}
        conn = self._connections().get(origin)
        if conn is not None:
            try:
                conn.request("GET", target, headers=headers)
                return origin, conn, conn.getresponse()
            except _STALE:  # closed by the server while idle: a new connection, the GET again
                self._forget(origin, conn)
        conn = self._connect(origin)
        try:
            conn.request("GET", target, headers=headers)
            return origin, conn, conn.getresponse()
        except BaseException:
            self._forget(origin, conn)
            raise

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        try:
            origin, conn, response = self._follow(url, start)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}") from exc
        try:
            if response.status >= 400:
                self._drain(origin, conn, response)
                raise FetchError(url, f"HTTP {response.status}", response.status)
            yield Chunks(
                self._chunks(url, response), range_start(url, response.status, response.getheader("content-range"))
            )
        finally:
            if not response.isclosed():  # a body not read to its end: the connection cannot be reused
                self._forget(origin, conn)

    def _follow(self, url: str, start: int) -> tuple[_Origin, http.client.HTTPConnection, http.client.HTTPResponse]:
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            origin, conn, response = self._get(target, start)
            if response.status not in _REDIRECTS:
                return origin, conn, response
            location = response.getheader("location")
            self._drain(origin, conn, response)
            if not location:
                raise FetchError(url, f"HTTP {response.status} without a Location", response.status)
            target = urljoin(target, location)
        raise FetchError(url, f"more than {MAX_REDIRECTS} redirects")

    def _drain(self, origin: _Origin, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        """Read a small body so the connection is kept; past ``ERROR_BODY_LIMIT`` close it instead."""
        try:
            response.read(ERROR_BODY_LIMIT + 1)
        except (OSError, http.client.HTTPException):
            self._forget(origin, conn)
            return
        if not response.isclosed():
            self._forget(origin, conn)

    def _chunks(self, url: str, response: http.client.HTTPResponse) -> Iterator[bytes]:
        try:
            while chunk := response.read(self._chunk_size):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(url, f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()
