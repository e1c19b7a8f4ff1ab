"""Refuse an oversized upload from its Content-Length before the form is parsed.

The size cap is also enforced while the bundle is copied (a chunked upload has
no Content-Length); this just avoids spooling gigabytes first.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

_FORM_OVERHEAD = 1024 * 1024  # room for the multipart envelope and form fields


class UploadLimit:
    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes + _FORM_OVERHEAD:
                body = json.dumps({"detail": f"bundle exceeds the upload limit of {self.max_bytes} bytes"}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 413, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
