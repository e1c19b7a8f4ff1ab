"""A small threaded HTTP/1.1 server for transport tests, counting the connections it accepts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CountingServer(ThreadingHTTPServer):
    connections = 0


class CountingHandler(BaseHTTPRequestHandler):
    """Keep-alive (HTTP/1.1), quiet, and each connection counted on its server."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        assert isinstance(self.server, CountingServer)
        self.server.connections += 1

    def answer(self, code: int, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(code)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[CountingHandler]) -> Iterator[CountingServer]:
    """``handler`` on a free local port, in a background thread, for the ``with`` block."""
    httpd = CountingServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
