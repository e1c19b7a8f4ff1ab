"""The fetcher on its own: resume with HTTP Range, retries with backoff, slow retrieval, disk space, memory."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from firmware_bundles import repo_paths
from firmware_bundles.messages import FailureReason
from firmware_bundles.uptane import Assignment
from vehicle_agent.config import DownloadLimits
from vehicle_agent.errors import FetchError, UpdateFailed
from vehicle_agent.fetcher import BundleFetcher
from vehicle_agent.transport import Chunks, HttpxTransport, MemoryTransport

REPO = "http://repo.test/repo"
PATH = "bundles/hw/2.0.otab"
URL = repo_paths.targets_url(REPO) + PATH
DATA = bytes(range(256)) * 1024  # 256 KiB
R = FailureReason


def assignment(data: bytes = DATA) -> Assignment:
    return Assignment(PATH, "ECU-1", "hw", "2.0", 2, len(data), hashlib.sha256(data).hexdigest())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Cut(MemoryTransport):
    """Serves DATA, but the first ``cuts`` requests break after ``after`` bytes."""

    def __init__(self, after: int, cuts: int = 1) -> None:
        super().__init__({URL: DATA}, chunk_size=4096)
        self.after = after
        self.cuts = cuts

    @contextmanager
    def stream(self, url: str, *, start: int = 0) -> Iterator[Chunks]:
        with super().stream(url, start=start) as chunks:
            if self.cuts <= 0:
                yield chunks
                return
            self.cuts -= 1
            yield Chunks(self._cut(url, chunks), chunks.start)

    def _cut(self, url: str, chunks: Chunks) -> Iterator[bytes]:
        sent = 0
        while sent < self.after:
            chunk = next(chunks, None)
            if chunk is None:
                return
            sent += len(chunk)
            yield chunk
        raise FetchError(url, "connection reset")


def make_fetcher(
    tmp_path: Path,
    transport: MemoryTransport,
    *,
    sleeps: list[float] | None = None,
    clock: Callable[[], float] | None = None,
    free: int = 10**12,
    **limits: object,
) -> BundleFetcher:
    return BundleFetcher(
        transport,
        REPO,
        tmp_path / "downloads",
        limits=DownloadLimits(disk_reserve_bytes=0, **limits),  # type: ignore[arg-type]
        monotonic=clock or Clock(),
        sleep=(sleeps if sleeps is not None else []).append,
        random=lambda: 1.0,
        free_space=lambda _path: free,
    )


def test_a_cut_download_resumes_with_a_range_request(tmp_path: Path) -> None:
    transport = Cut(after=100_000)
    sleeps: list[float] = []
    path = make_fetcher(tmp_path, transport, sleeps=sleeps).fetch(assignment())

    assert path.read_bytes() == DATA
    assert transport.starts == [0, 102_400]  # the second request asks for the rest only
    assert transport.sent[URL] == len(DATA)  # no byte paid for twice
    assert sleeps == [1.0]


def test_a_partial_file_left_by_a_restart_is_rehashed_and_resumed(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{assignment().sha256}.part").write_bytes(DATA[:50_000])
    transport = MemoryTransport({URL: DATA})

    assert make_fetcher(tmp_path, transport).fetch(assignment()).read_bytes() == DATA
    assert transport.starts == [50_000]
    assert transport.sent[URL] == len(DATA) - 50_000


def test_a_corrupt_partial_file_costs_one_clean_download_not_the_update(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{assignment().sha256}.part").write_bytes(b"\0" * 50_000)  # what a power cut can leave
    transport = MemoryTransport({URL: DATA})

    assert make_fetcher(tmp_path, transport).fetch(assignment()).read_bytes() == DATA
    assert transport.starts == [50_000, 0]


def test_a_server_ignoring_range_restarts_from_zero(tmp_path: Path) -> None:
    transport = Cut(after=100_000)
    transport.honour_ranges = False
    assert make_fetcher(tmp_path, transport).fetch(assignment()).read_bytes() == DATA
    assert transport.starts == [0, 102_400]
    assert transport.sent[URL] == 102_400 + len(DATA)


def test_a_range_past_the_end_starts_again(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    short = DATA[:1000]
    (downloads / f"{assignment(short).sha256}.part").write_bytes(short[:600])
    transport = MemoryTransport({URL: short[:500]})  # the server's file is shorter than our partial one
    with pytest.raises(UpdateFailed) as info:
        make_fetcher(tmp_path, transport).fetch(assignment(short))
    assert info.value.reason is R.DOWNLOAD_FAILED
    assert transport.starts[:2] == [600, 0]  # 416, then from zero


def test_retries_back_off_exponentially_with_jitter_then_keep_the_partial_file(tmp_path: Path) -> None:
    transport = Cut(after=8192, cuts=100)
    sleeps: list[float] = []
    fetcher = make_fetcher(tmp_path, transport, sleeps=sleeps, retries=4, backoff_base=2.0, backoff_max=10.0)
    with pytest.raises(UpdateFailed) as info:
        fetcher.fetch(assignment())
    assert info.value.reason is R.DOWNLOAD_FAILED
    assert sleeps == [2.0, 4.0, 8.0, 10.0]  # random() is 1.0 here: the cap of each full-jitter draw
    part = tmp_path / "downloads" / f"{assignment().sha256}.part"
    assert part.stat().st_size == 5 * 8192  # kept for the next try

    transport.cuts = 0
    assert fetcher.fetch(assignment()).read_bytes() == DATA
    assert transport.starts[-1] == 5 * 8192


def test_jitter_spreads_the_waits(tmp_path: Path) -> None:
    transport = Cut(after=8192, cuts=2)
    sleeps: list[float] = []
    draws = iter([0.25, 0.75])
    fetcher = BundleFetcher(
        transport,
        REPO,
        tmp_path / "d",
        limits=DownloadLimits(disk_reserve_bytes=0, backoff_base=4.0),
        sleep=sleeps.append,
        random=lambda: next(draws),
    )
    fetcher.fetch(assignment())
    assert sleeps == [1.0, 6.0]


def test_a_missing_file_is_not_retried(tmp_path: Path) -> None:
    sleeps: list[float] = []
    with pytest.raises(UpdateFailed) as info:
        make_fetcher(tmp_path, MemoryTransport(), sleeps=sleeps).fetch(assignment())
    assert info.value.reason is R.DOWNLOAD_FAILED
    assert "404" in info.value.detail
    assert sleeps == []


def test_free_disk_is_checked_before_any_byte_is_fetched(tmp_path: Path) -> None:
    transport = MemoryTransport({URL: DATA})
    with pytest.raises(UpdateFailed) as info:
        make_fetcher(tmp_path, transport, free=len(DATA) - 1).fetch(assignment())
    assert info.value.reason is R.INSUFFICIENT_STORAGE
    assert f"needs {len(DATA)} bytes" in info.value.detail
    assert transport.requests == []


def test_a_trickle_below_the_speed_floor_is_cut_off(tmp_path: Path) -> None:
    clock = Clock()

    def trickle() -> Iterator[bytes]:
        for i in range(0, len(DATA), 100):
            clock.now += 1.0  # 100 bytes a second
            yield DATA[i : i + 100]

    transport = MemoryTransport({URL: trickle})
    fetcher = make_fetcher(tmp_path, transport, clock=clock, min_bytes_per_second=1000.0, speed_window=30.0)
    with pytest.raises(UpdateFailed) as info:
        fetcher.fetch(assignment())
    assert info.value.reason is R.DOWNLOAD_TOO_SLOW
    assert "below the floor" in info.value.detail
    assert clock.now <= 31.0  # stopped after one window, not at the overall deadline
    assert not any((tmp_path / "downloads").iterdir())


def test_backoff_never_waits_past_the_overall_deadline(tmp_path: Path) -> None:
    transport = Cut(after=8192, cuts=100)
    fetcher = make_fetcher(tmp_path, transport, total_timeout=5.0, backoff_base=10.0)
    with pytest.raises(UpdateFailed) as info:
        fetcher.fetch(assignment())
    assert info.value.reason is R.DOWNLOAD_TOO_SLOW
    assert "not complete after 5 s" in info.value.detail


def _pattern(size: int, chunk: int) -> Iterator[bytes]:
    block = hashlib.sha256(b"big").digest() * (chunk // 32)
    for offset in range(0, size, chunk):
        yield block[: min(chunk, size - offset)]


def test_memory_stays_at_one_chunk_whatever_the_size(tmp_path: Path) -> None:
    size, chunk = 8 * 1024 * 1024, 64 * 1024
    digest = hashlib.sha256()
    for piece in _pattern(size, chunk):
        digest.update(piece)
    part = tmp_path / "downloads" / f"{digest.hexdigest()}.part"

    def body() -> Iterator[bytes]:
        given = 0
        for piece in _pattern(size, chunk):
            # each chunk is asked for only once the previous ones are on disk (written, not held)
            assert given == 0 or part.stat().st_size == given
            given += len(piece)
            yield piece

    transport = MemoryTransport({URL: body})
    target = Assignment(PATH, "ECU-1", "hw", "2.0", 2, size, digest.hexdigest())
    fetcher = make_fetcher(tmp_path, transport)
    tracemalloc.start()
    try:
        path = fetcher.fetch(target)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size == size
    assert peak < 8 * chunk, f"peak {peak} bytes while fetching {size}"


def test_httpx_transport_sends_range_and_reads_content_range() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        header = request.headers.get("range")
        if header is None:
            return httpx.Response(200, content=DATA)
        start = int(header.removeprefix("bytes=").rstrip("-"))
        headers = {"content-range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"}
        return httpx.Response(206, content=DATA[start:], headers=headers)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        transport = HttpxTransport(client)
        with transport.stream(URL, start=1000) as chunks:
            assert chunks.start == 1000
            assert b"".join(chunks) == DATA[1000:]
        with transport.stream(URL) as chunks:
            assert chunks.start == 0
            assert b"".join(chunks) == DATA
