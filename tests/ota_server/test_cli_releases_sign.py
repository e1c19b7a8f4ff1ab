"""`ota releases sign` (one group with build, upload and list) and the old spelling `ota release sign`,
which still works and says on stderr that it is deprecated."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from ota_server.cli import common as cli_common
from ota_server.cli.main import app
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import upload
from tests.ota_server.test_cli_ops import LoopTransport, ota
from tests.ota_server.test_offline_signing import offline_env

__all__ = ["offline_env"]  # the fixture, used by name below


async def _pending_release(env: Env, version: str, counter: int) -> int:
    resp = await upload(env.client, version=version, counter=counter)
    assert resp.status_code == 201, resp.text
    assert resp.json()["published"] is False
    release_id: int = resp.json()["id"]
    return release_id


async def _published(env: Env, release_id: int) -> bool:
    releases = (await env.client.get("/api/v1/releases")).json()["items"]
    return any(r["id"] == release_id and r["published"] for r in releases)


async def test_releases_sign_and_the_deprecated_release_sign(
    offline_env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = offline_env
    transport = LoopTransport(httpx.ASGITransport(app=env.app), asyncio.get_running_loop())
    monkeypatch.setattr(cli_common, "transport_override", transport)
    offline = str(tmp_path / "offline")

    first = await _pending_release(env, "2.0.0", 2)
    signed = await ota(env, "releases", "sign", "--offline-dir", offline)
    assert signed.exit_code == 0, signed.output
    assert f"releases [{first}]" in signed.stdout
    assert "deprecated" not in signed.stderr
    assert await _published(env, first)

    second = await _pending_release(env, "3.0.0", 3)
    old = await ota(env, "release", "sign", "--offline-dir", offline)
    assert old.exit_code == 0, old.output
    assert "`ota release sign` is deprecated; use `ota releases sign`" in old.stderr
    assert f"releases [{second}]" in old.stdout
    assert await _published(env, second)


def test_the_old_spelling_is_hidden_from_help() -> None:
    from typer.testing import CliRunner

    shown = CliRunner().invoke(app, ["--help"])
    assert shown.exit_code == 0
    assert "releases" in shown.stdout
    assert " release " not in shown.stdout
    sign = CliRunner().invoke(app, ["releases", "--help"])
    assert "sign" in sign.stdout and "build" in sign.stdout
