"""Small bundles and deltas from memory: whole, from an offset (a resumed download), or refused past the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from ota_server.http.repo import SmallFiles
from ota_server.services.repository import RepoReader
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import bundle_bytes, upload


async def _published(env: Env) -> tuple[str, bytes]:
    data = bundle_bytes(version="1.4.0", counter=4)
    release = await upload(env.client, data, version="1.4.0", counter=4)
    assert release.status_code == 201, release.text
    return f"/repo/image/targets/{release.json()['target_path']}", data


async def test_a_small_bundle_is_served_whole_from_an_offset_and_refused_past_its_end(env: Env) -> None:
    url, data = await _published(env)
    whole = await env.client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes" and int(whole.headers["content-length"]) == len(data)
    resumed = await env.client.get(url, headers={"Range": "bytes=100-"})
    assert resumed.status_code == 206 and resumed.content == data[100:]
    assert resumed.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    past = await env.client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    head = await env.client.head(url)
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(data)


async def test_once_read_a_small_bundle_needs_no_lookup(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    url, data = await _published(env)
    assert (await env.client.get(url)).content == data

    def no_lookup(self: RepoReader, target_path: str) -> Path:
        raise AssertionError(f"looked up {target_path} again")

    monkeypatch.setattr(RepoReader, "target", no_lookup)
    again = await env.client.get(url, headers={"Range": "bytes=7-"})
    assert again.status_code == 206 and again.content == data[7:]


async def test_other_ranges_go_to_the_file_response(env: Env) -> None:
    url, data = await _published(env)
    await env.client.get(url)  # now in memory too
    tail = await env.client.get(url, headers={"Range": "bytes=-10"})  # a suffix range: Starlette's own handling
    assert tail.status_code == 206 and tail.content == data[-10:]
    middle = await env.client.get(url, headers={"Range": "bytes=5-9"})
    assert middle.status_code == 206 and middle.content == data[5:10]


def test_only_small_files_are_kept_and_the_oldest_go_first(tmp_path: Path) -> None:
    files = SmallFiles(max_file=10, max_total=25)
    for name, size in (("a", 10), ("b", 10), ("big", 11)):
        (tmp_path / name).write_bytes(bytes(size))
    assert files.load("big", tmp_path / "big") is None and files.get("big") is None
    assert files.load("a", tmp_path / "a") == bytes(10)
    assert files.load("b", tmp_path / "b") == bytes(10)
    assert files.get("a") is not None  # a is now the most recently used
    (tmp_path / "c").write_bytes(bytes(10))
    files.load("c", tmp_path / "c")  # 30 bytes > 25: the least recently used (b) goes
    assert files.get("b") is None and files.get("a") is not None and files.get("c") is not None
