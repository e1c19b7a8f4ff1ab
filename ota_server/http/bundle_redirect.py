"""Bundles handed out by URL: ``/repo/targets/...`` answers 307 to an object store.

With ``bundle_url_prefix`` set (``OTA_BUNDLE_URL_PREFIX``, e.g. a public MinIO/S3 bucket
that a sync job fills from the bundle volume), a car asking a replica for a bundle or a
delta is sent to ``<prefix>/<sha256>.otab`` (``.bsdiff`` for a delta): the store holds the
same content-addressed files the server keeps under ``<data dir>/bundles``. Only targets
the server would serve itself are redirected (published, file present); anything else gets
the server's own answer. The store is untrusted: the agent checks every bundle's signed
length and sha256, so tampered bytes there are refused (``hash_mismatch``) like any others.
Metadata is never redirected: it is signed per request where due, and small.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from firmware_bundles import repo_paths
from ota_server.errors import OtaError
from ota_server.runtime import Runtime
from ota_server.services import releases

_TARGETS = "/repo/" + repo_paths.TARGETS


class BundleRedirect:
    def __init__(self, app: ASGIApp, prefix: str | None, runtime_of: Callable[[], Runtime | None]) -> None:
        self.app = app
        self.prefix = (prefix or "").rstrip("/")
        self._runtime_of = runtime_of

    def _file(self, runtime: Runtime, target_path: str) -> Path | None:
        try:
            with runtime.sessions() as session:
                return releases.bundle_path(session, runtime.bundles, target_path)
        except OtaError:
            return None  # unknown, unpublished or missing: the server answers itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        runtime = self._runtime_of() if self.prefix else None
        if (
            runtime is None
            or scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not path.startswith(_TARGETS)
            or len(path) == len(_TARGETS)
        ):
            await self.app(scope, receive, send)
            return
        file = await asyncio.to_thread(self._file, runtime, path[len(_TARGETS) :])
        if file is None:
            await self.app(scope, receive, send)
            return
        location = f"{self.prefix}/{quote(file.name)}"
        headers = [(b"location", location.encode()), (b"content-length", b"0"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 307, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
