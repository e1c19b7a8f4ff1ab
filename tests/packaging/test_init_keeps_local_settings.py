"""``vehicle-agent init`` on a car that already has an agent.toml (the Pi story of docs/raspberry-pi.md).

Provisioning again replaces the identity, URLs, roots and ECUs, and keeps what a person set on the car:
the installer tables, the health check, the state directory (the journal stays where it was).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from firmware_bundles.report_signing import generate_report_key, private_key_pem
from vehicle_agent import cli
from vehicle_agent.config import DATA_DIR, DEFAULT_CONFIG, load_config

from ..vehicle_agent.fakes import VIN, FakeServer

PI_SAMPLE = Path(__file__).resolve().parents[2] / "packaging" / "raspberry-pi" / "agent.toml"


@pytest.fixture
def provisioning(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer()
    key = generate_report_key()

    def fake_post(url: str, **_kwargs: Any) -> httpx.Response:
        identity = {
            "vin": VIN,
            "keyid": key.public_key.keyid,
            "report_private_key": private_key_pem(key).decode(),
            "agent_config": server.agent_config_doc(),
        }
        return httpx.Response(200, json=identity, request=httpx.Request("POST", url))

    monkeypatch.setattr(httpx, "post", fake_post)
    return server


def _init(directory: Path) -> Any:
    args = ["init", "--server", "http://srv.test", "--vin", VIN, "--dir", str(directory), "--no-certificate"]
    return CliRunner().invoke(cli.app, args)


def test_init_keeps_the_pi_sample_tables_and_state_dir(provisioning: FakeServer, tmp_path: Path) -> None:
    shutil.copy(PI_SAMPLE, tmp_path / "agent.toml")
    before = (tmp_path / "agent.toml").read_text()
    # the sample's state_dir is the data partition's; point it at the test's own directory
    sample = before.replace('state_dir = "/data/ota/state"', f'state_dir = "{tmp_path / "journal-here"}"')
    assert sample != before
    sample += "\n[download]\nchunk_size = 4096\n"
    (tmp_path / "agent.toml").write_text(sample)

    result = _init(tmp_path)

    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "agent.toml")
    assert config.vin == VIN  # the server's identity ...
    assert config.image_root == provisioning.image_root
    assert config.report_key is not None
    assert config.installer.backend == "rpi-tryboot"  # ... and the car's own settings
    assert config.installer.tryboot.slot_b.device == Path("/dev/mmcblk0p6")
    assert config.installer.max_boot_attempts == 3
    assert config.health.command[0] == "/usr/local/bin/ota-health-check"
    assert config.download.chunk_size == 4096
    assert config.state_dir == tmp_path / "journal-here"
    assert (tmp_path / "journal-here" / "slots").is_dir()  # the seeded slots went to the kept state_dir
    assert (tmp_path / "agent.toml.before-init").read_text() == sample
    assert "installer" in result.output and "state_dir" in result.output


def test_init_without_a_previous_config_writes_the_plain_bundle(provisioning: FakeServer, tmp_path: Path) -> None:
    result = _init(tmp_path)
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "agent.toml")
    assert config.installer.backend == "file"
    assert config.state_dir == tmp_path / "state"
    assert not (tmp_path / "agent.toml.before-init").exists()


def test_init_twice_is_stable(provisioning: FakeServer, tmp_path: Path) -> None:
    shutil.copy(PI_SAMPLE, tmp_path / "agent.toml")
    text = (tmp_path / "agent.toml").read_text().replace("/data/ota/state", str(tmp_path / "s"))
    (tmp_path / "agent.toml").write_text(text)
    assert _init(tmp_path).exit_code == 0
    first = load_config(tmp_path / "agent.toml")
    assert _init(tmp_path).exit_code == 0
    second = load_config(tmp_path / "agent.toml")
    assert (second.installer, second.health, second.state_dir) == (first.installer, first.health, first.state_dir)
    assert (tmp_path / "agent.toml").read_text().count("[installer]") == 1


def test_init_refuses_a_broken_config_before_asking_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(httpx, "post", lambda url, **_: asked.append(url))
    (tmp_path / "agent.toml").write_text("[installer\nbackend = 'rpi-tryboot'\n")
    result = _init(tmp_path)
    assert result.exit_code == 2
    assert "not valid TOML" in result.output
    assert asked == []  # the car's key was not replaced
    assert (tmp_path / "agent.toml").read_text().startswith("[installer\n")


def test_the_car_s_files_default_to_the_data_partition() -> None:
    """Identity, keys, roots and journal are on the data partition, never the root fs an update replaces."""
    assert Path("/data/ota") == DATA_DIR
    assert DEFAULT_CONFIG == DATA_DIR / "agent.toml"
    params = _defaults()
    assert params["init"]["directory"] == DATA_DIR
    for command in ("run", "status"):
        assert params[command]["config"] == DEFAULT_CONFIG
    sample = PI_SAMPLE.read_text()
    assert 'state_dir = "/data/ota/state"' in sample
    guide = (PI_SAMPLE.parents[2] / "docs" / "raspberry-pi.md").read_text()
    assert "--token" in guide and "/data/ota" in guide
    assert "/etc/vehicle-agent" not in guide and "/var/lib/vehicle-agent" not in guide


def _defaults() -> dict[str, dict[str | None, object]]:
    """Each command's options and their defaults, as the CLI declares them."""
    import typer.core
    import typer.main

    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    return {name: {p.name: p.default for p in group.commands[name].params} for name in ("init", "run", "status")}
