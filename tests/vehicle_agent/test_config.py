"""Configuration: the TOML file, the server's agent-config document and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vehicle_agent.config import (
    DownloadLimits,
    HealthOptions,
    MqttOptions,
    config_from_agent_config,
    load_config,
    write_config,
)
from vehicle_agent.errors import ConfigError

from .fakes import HW, SERIAL, VIN, FakeServer


def test_agent_config_document_round_trips_through_toml(server: FakeServer, tmp_path: Path) -> None:
    config = config_from_agent_config(
        server.agent_config_doc(),
        tmp_path / "state",
        health=HealthOptions(command=("/bin/true",), timeout=5),
        download=DownloadLimits(chunk_size=1024, total_timeout=60.0),
        mqtt=MqttOptions(keepalive=30),
        durable=False,
    )
    path = tmp_path / "agent.toml"
    write_config(config, path)
    loaded = load_config(path)
    assert loaded == config
    assert loaded.ecu_hardware() == {SERIAL: HW}
    assert "signatures" not in repr(loaded)  # the roots stay out of logs


def test_missing_file_and_bad_values_say_what_is_wrong(server: FakeServer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")
    doc = server.agent_config_doc()
    with pytest.raises(ConfigError, match="check digit"):
        config_from_agent_config({**doc, "vin": VIN[:8] + ("0" if VIN[8] != "0" else "1") + VIN[9:]}, tmp_path)
    with pytest.raises(ConfigError, match="mqtt_url"):
        config_from_agent_config({**doc, "mqtt_url": "http://x"}, tmp_path)
    with pytest.raises(ConfigError, match="image_root"):
        config_from_agent_config({**doc, "image_root": json.dumps({"signed": {}})}, tmp_path)
    with pytest.raises(ConfigError, match="ecus"):
        config_from_agent_config({**doc, "ecus": []}, tmp_path)


def test_unknown_option_and_bad_toml(server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    write_config(config_from_agent_config(server.agent_config_doc(), tmp_path / "state"), path)
    path.write_text(path.read_text().replace("chunk_size", "chunk_sise"))
    with pytest.raises(ConfigError, match="unknown or misspelt"):
        load_config(path)
    path.write_text("vin = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_the_outage_patience_is_read_from_the_download_table_and_checked(server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    write_config(config_from_agent_config(server.agent_config_doc(), tmp_path / "state"), path)
    text = path.read_text()
    assert "outage_patience = 600.0" in text  # written out with the other download limits
    path.write_text(text.replace("outage_patience = 600.0", "outage_patience = 120.0"))
    assert load_config(path).download.outage_patience == 120
    path.write_text(text.replace("outage_patience = 600.0", "outage_patience = -1.0"))
    with pytest.raises(ConfigError, match="outage_patience"):
        load_config(path)
