"""The Raspberry Pi packaging: the systemd unit, the install script and the sample config."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

from vehicle_agent.config import load_config
from vehicle_agent.tryboot import slot_factory

from .vehicle_agent.fakes import FakeServer

PI = Path(__file__).resolve().parents[1] / "packaging" / "raspberry-pi"


def test_the_unit_parses_restarts_always_and_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(PI / "vehicle-agent.service")
    service = unit["Service"]
    assert service["ExecStart"].endswith("vehicle-agent run --config /data/ota/agent.toml")
    assert service["Restart"] == "always"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == value, key
    assert service["ReadWritePaths"].split() == ["/data/ota", "/boot/autoboot"]  # the data partition's part
    assert unit["Unit"]["RequiresMountsFor"] == "/data"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_the_install_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(PI / "install.sh")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = (PI / "install.sh").read_text()
    for step in ("-m venv", "-m pip install", "/data/ota", "ota_vehicle_agent-*.whl", "systemctl enable"):
        assert step in text, step


def test_the_sample_config_selects_the_tryboot_backend(tmp_path: Path) -> None:
    server = FakeServer()
    shutil.copy(PI / "agent.toml", tmp_path / "agent.toml")
    (tmp_path / "image_root.json").write_bytes(server.image_root)
    (tmp_path / "director_root.json").write_bytes(server.director_root)
    config = load_config(tmp_path / "agent.toml")
    assert config.installer.backend == "rpi-tryboot"
    assert config.installer.tryboot.slot_b.device == Path("/dev/mmcblk0p6")
    assert config.state_dir == Path("/data/ota/state")
    assert slot_factory(config) is not None
