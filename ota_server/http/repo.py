"""The repositories over HTTP, outside the API's middleware stack.

Cars fetch ~10 files each (both repositories' metadata and the bundle), so at fleet scale
these requests outnumber every other route by far. They need none of what the API stack
does per request (tokens, rate limits, body limits, dependency injection), so this ASGI
layer answers ``GET``/``HEAD /repo/...`` itself: the Image repository straight from memory
when its copy is fresh, and a car's Director snapshot and targets when the timestamp that
names them was served here (no thread hop for either), everything else through
:class:`~ota_server.services.repository.RepoReader` in a small thread pool. Bundles and
deltas up to ``SMALL_FILE_BYTES`` are kept in memory once read (their files are named by
content and never change) and answered with one send, ``Range: bytes=N-`` honoured; larger
ones, and other ranges, go through Starlette's ``FileResponse``. Anything else, and a path it
does not know, goes on to the app. It counts its requests in the same HTTP latency histogram
as the API, labelled by route template. Errors are answered with the API's own status and
headers (:mod:`ota_server.api.handlers`): a database outage is a 503 with ``Retry-After``,
logged in one line (at most one every ``OUTAGE_LOG_EVERY_S``, with the count between).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from starlette.responses import FileResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from firmware_bundles import repo_paths
from ota_server.api.handlers import headers_for, status_for
from ota_server.errors import OtaError
from ota_server.http.metrics import Metrics
from ota_server.services.repository import RepoReader, unservable

_PREFIX = "/repo/"
_IMAGE = _PREFIX + repo_paths.IMAGE_METADATA
_TARGETS = _PREFIX + repo_paths.TARGETS
_DIRECTOR = _PREFIX + "director/"
_DIRECTOR_TAIL = "/metadata/"
IMAGE_ROUTE = "/" + "repo/" + repo_paths.IMAGE_METADATA + "{name}"
TARGETS_ROUTE = "/" + "repo/" + repo_paths.TARGETS + "{target_path}"
DIRECTOR_ROUTE = "/" + "repo/" + repo_paths.DIRECTOR_METADATA + "{name}"
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-cache")]
_OCTETS = (b"content-type", b"application/octet-stream")
_RANGES = (b"accept-ranges", b"bytes")
_OPEN_RANGE = re.compile(r"^bytes=(\d{1,15})-$")
SMALL_FILE_BYTES = 1 << 20  # bundles and deltas up to this size are served from memory
SMALL_FILES_TOTAL = 64 << 20  # at most this much of them kept
OUTAGE_LOG_EVERY_S = 10.0  # a fleet asking through an outage: one log line per this many seconds

log = logging.getLogger(__name__)


class SmallFiles:
    """Target path to the bytes of its (content-named, immutable) file, least recently used dropped first."""

    def __init__(self, max_file: int = SMALL_FILE_BYTES, max_total: int = SMALL_FILES_TOTAL) -> None:
        self.max_file, self._max_total = max_file, max_total
        self._files: OrderedDict[str, bytes] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, target_path: str) -> bytes | None:
        with self._lock:
            data = self._files.get(target_path)
            if data is not None:
                self._files.move_to_end(target_path)
            return data

    def load(self, target_path: str, file: Path) -> bytes | None:
        """Read and keep ``file`` if it is small (blocking: call it in a thread); None when it is not."""
        if file.stat().st_size > self.max_file:
            return None
        data = file.read_bytes()
        with self._lock:
            if target_path not in self._files:
                self._files[target_path] = data
                self._total += len(data)
            while self._total > self._max_total and self._files:
                _, dropped = self._files.popitem(last=False)
                self._total -= len(dropped)
        return data


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _json_error(status: int, detail: str) -> tuple[int, bytes]:
    return status, json.dumps({"detail": detail}).encode()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RepoHttp:
    def __init__(
        self,
        app: ASGIApp,
        reader_of: Callable[[], RepoReader | None],
        metrics: Metrics,
        *,
        threads: int = 8,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self._reader_of = reader_of
        self._metrics = metrics
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="repo-read")
        self.small_files = SmallFiles()
        self._monotonic = monotonic
        self._logged_at: float | None = None
        self._unlogged = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(_PREFIX) or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        reader = self._reader_of()
        if reader is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        if (problem := unservable(path)) is not None:
            route = "/repo/{path}"
            status, body = _json_error(404, problem)
            headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        elif path.startswith(_TARGETS) and len(path) > len(_TARGETS):
            route = TARGETS_ROUTE
            status = await self._target(reader, path[len(_TARGETS) :], scope, receive, send)
        elif path.startswith(_IMAGE) and "/" not in path[len(_IMAGE) :] and len(path) > len(_IMAGE):
            route = IMAGE_ROUTE
            image_name = path[len(_IMAGE) :]
            status = await self._metadata(
                scope, send, lambda: reader.image_cached(image_name), lambda: reader.image(image_name)
            )
        elif path.startswith(_DIRECTOR):
            vin, sep, name = path[len(_DIRECTOR) :].partition(_DIRECTOR_TAIL)
            if not sep or not vin or not name or "/" in vin or "/" in name:
                await self.app(scope, receive, send)
                return
            route = DIRECTOR_ROUTE
            status = await self._metadata(
                scope, send, lambda: reader.director_cached(vin, name), lambda: reader.director(vin, name)
            )
        else:
            await self.app(scope, receive, send)
            return
        self._metrics.http_latency.labels(route, scope["method"], str(status)).observe(time.perf_counter() - start)

    async def _metadata(
        self, scope: Scope, send: Send, cached: Callable[[], bytes | None], read: Callable[[], bytes]
    ) -> int:
        try:
            body = cached()
            if body is None:
                body = await asyncio.get_running_loop().run_in_executor(self._pool, read)
        except OtaError as exc:
            return await self._error(scope, send, exc)
        headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        return 200

    async def _error(self, scope: Scope, send: Send, exc: OtaError) -> int:
        """The error's answer as the API gives it (status, headers, ``{"detail": ...}``)."""
        status, body = _json_error(status_for(exc), exc.message)
        if status >= 500:
            self._log_refusal(scope, status, exc)
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers_for(exc) or {}).items()]
        headers = [*_JSON_HEADERS, *extra, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        return status

    def _log_refusal(self, scope: Scope, status: int, exc: OtaError) -> None:
        """One line, no traceback: an outage is the operator's news once, not a screen per car."""
        now = self._monotonic()
        if self._logged_at is not None and now - self._logged_at < OUTAGE_LOG_EVERY_S:
            self._unlogged += 1
            return
        cause = f" ({type(exc.__cause__).__name__}: {_first_line(exc.__cause__)})" if exc.__cause__ else ""
        more = f"; {self._unlogged} more such answers since the last line" if self._unlogged else ""
        log.warning("%s %s answered %d: %s%s%s", scope["method"], scope["path"], status, exc.message, cause, more)
        self._logged_at, self._unlogged = now, 0

    async def _target(self, reader: RepoReader, target_path: str, scope: Scope, receive: Receive, send: Send) -> int:
        range_header = _header(scope, b"range")
        wanted = _OPEN_RANGE.match(range_header) if range_header is not None else None
        servable = range_header is None or wanted is not None  # other ranges: FileResponse's own handling
        data = self.small_files.get(target_path) if servable else None
        if data is not None:
            return await self._small(scope, send, data, int(wanted[1]) if wanted else None)
        try:
            file: Path = await asyncio.get_running_loop().run_in_executor(self._pool, reader.target, target_path)
            if servable:
                data = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self.small_files.load, target_path, file
                )
                if data is not None:
                    return await self._small(scope, send, data, int(wanted[1]) if wanted else None)
        except OtaError as exc:
            return await self._error(scope, send, exc)
        response = FileResponse(file, media_type="application/octet-stream")
        status = 200
        original_send = send

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(str(message["status"]))
            await original_send(message)

        await response(scope, receive, recording_send)
        return status

    @staticmethod
    async def _small(scope: Scope, send: Send, data: bytes, start: int | None) -> int:
        """A whole small file (200), or from ``start`` on (206; 416 past its end)."""
        size = len(data)
        if start is not None and start >= size:
            headers = [_RANGES, (b"content-range", f"bytes */{size}".encode()), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 416, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return 416
        status, body, headers = 200, data, [_OCTETS, _RANGES]
        if start is not None:
            status, body = 206, data[start:]
            headers.append((b"content-range", f"bytes {start}-{size - 1}/{size}".encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        return status

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
