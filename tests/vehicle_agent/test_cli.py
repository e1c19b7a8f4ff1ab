"""``vehicle-agent init`` and ``status`` (``run`` needs a broker; the MQTT link has its own test)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from firmware_bundles.report_signing import generate_report_key, private_key_pem
from vehicle_agent import cli
from vehicle_agent.config import load_config

from .fakes import HW, OLD, SERIAL, VIN, FakeServer


def test_init_writes_config_roots_and_seeded_slots(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    key = generate_report_key()

    def fake_post(url: str, **_kwargs: Any) -> httpx.Response:
        asked.append(url)
        identity = {
            "vin": VIN,
            "keyid": key.public_key.keyid,
            "report_private_key": private_key_pem(key).decode(),
            "agent_config": server.agent_config_doc(),
        }
        return httpx.Response(200, json=identity, request=httpx.Request("POST", url))

    monkeypatch.setattr(httpx, "post", fake_post)
    runner = CliRunner()
    result = runner.invoke(cli.app, ["init", "--server", "http://srv.test/", "--vin", VIN, "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert asked == [f"http://srv.test/api/v1/vehicles/{VIN}/provision"]
    config = load_config(tmp_path / "agent.toml")
    assert config.vin == VIN
    assert config.report_key == private_key_pem(key)
    assert (tmp_path / "report_key.pem").stat().st_mode & 0o077 == 0
    assert (tmp_path / "image_root.json").read_bytes() == server.image_root

    result = runner.invoke(cli.app, ["status", "--config", str(tmp_path / "agent.toml")])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["slots"][SERIAL]["headers"]["a"] == {"hardware_id": HW, "version": OLD}
    assert status["campaigns"] == {}


def test_init_refuses_a_bad_vin(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.app, ["init", "--server", "http://x", "--vin", "NOPE", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "17 characters" in result.output
