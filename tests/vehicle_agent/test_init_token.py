"""``vehicle-agent init`` provisions through the operator API, so it sends an operator's token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from vehicle_agent import cli

from .fakes import VIN


@pytest.mark.parametrize("how", ["option", "env"])
def test_init_sends_the_api_token(how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, str]] = []

    def fake_post(url: str, **kwargs: Any) -> httpx.Response:
        sent.append(kwargs.get("headers") or {})
        return httpx.Response(401, json={"detail": "unknown or revoked API token"}, request=httpx.Request("POST", url))

    monkeypatch.setattr(httpx, "post", fake_post)
    args = ["init", "--server", "http://srv.test", "--vin", VIN, "--dir", str(tmp_path)]
    if how == "option":
        args += ["--token", "ota_secret"]
    else:
        monkeypatch.setenv("OTA_TOKEN", "ota_secret")
    result = CliRunner().invoke(cli.app, args)
    assert sent == [{"Authorization": "Bearer ota_secret"}]
    assert result.exit_code == 2 and "401" in result.output
