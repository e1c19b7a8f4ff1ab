"""Error answers keep the kept-alive connection (TUF's root probe is a 404 for every car), unless huge."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tests.http_servers import CountingHandler, CountingServer, serving
from vehicle_agent.errors import FetchError
from vehicle_agent.transport import ERROR_BODY_LIMIT, HttpxTransport, PerThreadTransport, Transport, make_http_client


class _Handler(CountingHandler):
    def do_GET(self) -> None:
        if self.path == "/huge":
            size = 40 * ERROR_BODY_LIMIT
            self.send_response(404)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x" * ERROR_BODY_LIMIT)
            return
        if self.path == "/cookie":  # a server that hands out a cookie, then shows what came back
            self.answer(200, self.headers.get("Cookie", "none").encode(), ("Set-Cookie", "session=abc; Path=/"))
            return
        code, body = (404, b'{"detail": "no such file"}') if self.path == "/missing" else (200, b"signed bytes")
        self.answer(code, body)


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with serving(_Handler) as httpd:
        yield httpd


def _get(transport: Transport, url: str) -> bytes:
    with transport.stream(url) as chunks:
        return b"".join(chunks)


def test_a_404_keeps_the_connection_for_the_next_request(server: CountingServer) -> None:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with make_http_client() as client:
        transport = HttpxTransport(client)
        for _ in range(3):
            with pytest.raises(FetchError) as info:
                _get(transport, base + "/missing")
            assert info.value.status == 404
        assert _get(transport, base + "/ok") == b"signed bytes"
    assert server.connections == 1


def test_a_huge_error_body_is_not_read_the_connection_is_dropped(server: CountingServer) -> None:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with make_http_client() as client:
        transport = HttpxTransport(client)
        with pytest.raises(FetchError):
            _get(transport, base + "/huge")
        assert _get(transport, base + "/ok") == b"signed bytes"
    assert server.connections == 2


def test_each_thread_keeps_its_own_connection(server: CountingServer) -> None:
    """A fleet's worker threads do not share one pool: each keeps one connection alive for its
    requests (a shared client would serve these one-after-another threads on one connection)."""
    base = f"http://127.0.0.1:{server.server_address[1]}"
    transport = PerThreadTransport()
    got: list[bytes] = []

    def car() -> None:
        got.extend(_get(transport, base + "/ok") for _ in range(3))
        with pytest.raises(FetchError):
            _get(transport, base + "/missing")
        got.append(_get(transport, base + "/ok"))

    try:
        for _ in range(3):
            thread = threading.Thread(target=car)
            thread.start()
            thread.join()
        assert got == [b"signed bytes"] * 12
        assert transport.clients == 3
        assert server.connections == 3  # one per thread, kept alive across its five requests
    finally:
        transport.close()
    assert transport.clients == 0
    with pytest.raises(RuntimeError):  # a closed transport makes no new client
        threading_result(lambda: _get(transport, base + "/ok"))


def threading_result(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a new thread; return its result or raise its exception here."""
    box: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box[0]


def test_the_client_keeps_and_sends_no_cookies(server: CountingServer) -> None:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with make_http_client() as client:
        transport = HttpxTransport(client)
        assert _get(transport, base + "/cookie") == b"none"
        assert _get(transport, base + "/cookie") == b"none"  # a plain httpx.Client sends session=abc back
        assert len(client.cookies) == 0
