"""The simulated cars' ``http.client`` transport keeps the agent's transport contract."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from simulator.http_transport import MAX_REDIRECTS, StdlibTransport
from tests.http_servers import CountingHandler, CountingServer, serving
from vehicle_agent.errors import FetchError
from vehicle_agent.transport import ERROR_BODY_LIMIT

BODY = b"signed bytes of a bundle"


class _Handler(CountingHandler):
    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        if self.path == "/file" and wanted:
            start = int(wanted.removeprefix("bytes=").removesuffix("-"))
            self.answer(206, BODY[start:], ("Content-Range", f"bytes {start}-{len(BODY) - 1}/{len(BODY)}"))
        elif self.path == "/file":
            self.answer(200, BODY)
        elif self.path == "/bad-range":
            self.answer(206, BODY, ("Content-Range", "bytes nonsense"))
        elif self.path == "/moved":
            self.answer(307, b"", ("Location", "/file"))
        elif self.path == "/loop":
            self.answer(302, b"", ("Location", "/loop"))
        elif self.path == "/huge":
            self.answer(404, b"x" * (4 * ERROR_BODY_LIMIT))
        elif self.path == "/then-hang-up":  # keep-alive promised, then closed while idle (an expiry)
            self.answer(200, BODY)
            self.close_connection = True
        else:
            self.answer(404, b'{"detail": "no such file"}')


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with serving(_Handler) as httpd:
        yield httpd


@pytest.fixture
def transport() -> Iterator[StdlibTransport]:
    made = StdlibTransport()
    yield made
    made.close()


def _base(server: CountingServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _get(transport: StdlibTransport, url: str, start: int = 0) -> tuple[int, bytes]:
    with transport.stream(url, start=start) as chunks:
        return chunks.start, b"".join(chunks)


def test_bodies_ranges_and_errors_over_one_kept_alive_connection(
    server: CountingServer, transport: StdlibTransport
) -> None:
    base = _base(server)
    assert _get(transport, base + "/file") == (0, BODY)
    assert _get(transport, base + "/file", start=7) == (7, BODY[7:])
    for _ in range(3):  # TUF's root probe: a 404 for every car, the connection kept
        with pytest.raises(FetchError) as info:
            _get(transport, base + "/missing")
        assert info.value.status == 404
    assert _get(transport, base + "/moved") == (0, BODY)
    assert server.connections == 1


def test_a_malformed_content_range_is_refused(server: CountingServer, transport: StdlibTransport) -> None:
    with pytest.raises(FetchError, match="malformed Content-Range"):
        _get(transport, _base(server) + "/bad-range", start=3)


def test_a_huge_error_body_closes_the_connection_instead_of_reading_it(
    server: CountingServer, transport: StdlibTransport
) -> None:
    with pytest.raises(FetchError) as info:
        _get(transport, _base(server) + "/huge")
    assert info.value.status == 404
    assert _get(transport, _base(server) + "/file") == (0, BODY)
    assert server.connections == 2


def test_a_connection_closed_while_idle_is_replaced_and_the_get_sent_again(
    server: CountingServer, transport: StdlibTransport
) -> None:
    assert _get(transport, _base(server) + "/then-hang-up") == (0, BODY)
    assert _get(transport, _base(server) + "/file") == (0, BODY)
    assert server.connections == 2


def test_a_body_left_half_read_does_not_poison_the_next_request(
    server: CountingServer, transport: StdlibTransport
) -> None:
    small = StdlibTransport(chunk_size=4)
    try:
        with small.stream(_base(server) + "/file") as chunks:
            assert next(chunks) == BODY[:4]
        assert _get(small, _base(server) + "/file") == (0, BODY)
    finally:
        small.close()
    assert server.connections == 2


def test_a_redirect_loop_and_an_unreachable_server_are_fetch_errors(
    server: CountingServer, transport: StdlibTransport
) -> None:
    with pytest.raises(FetchError, match=f"more than {MAX_REDIRECTS} redirects"):
        _get(transport, _base(server) + "/loop")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: the connection is refused
        with pytest.raises(FetchError) as info:
            _get(transport, f"http://127.0.0.1:{port}/file")
    assert info.value.status is None
