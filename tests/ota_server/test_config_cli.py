"""Settings from the environment, the ``ota db upgrade`` command, and the keys-vs-root guard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from ota_server.cli.main import app
from ota_server.config import Settings
from ota_server.db.session import make_engine
from ota_server.errors import InvalidInput, NotReady
from tests.ota_server.conftest import make_settings, running


def test_settings_from_env() -> None:
    settings = Settings.from_env(
        {"OTA_DATA_DIR": "/srv/ota", "OTA_PORT": "0", "OTA_MQTT_URL": "mqtt://broker:1883", "HOME": "/root"}
    )
    assert settings.data_dir == Path("/srv/ota")
    assert settings.port == 0
    assert settings.mqtt_url == "mqtt://broker:1883"
    assert settings.resolved_database_url == "sqlite:////srv/ota/ota.db"
    assert Settings.from_env({}).port is None
    with pytest.raises(InvalidInput, match="OTA_PORT"):
        Settings.from_env({"OTA_PORT": "eighty"})


def test_public_url_defaults_to_host_and_port() -> None:
    assert Settings(port=8123).repo_url == "http://127.0.0.1:8123/repo"
    assert Settings(public_url="https://ota.example/").repo_url == "https://ota.example/repo"


def test_db_upgrade_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTA_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path), "--create"])
    assert result.exit_code == 0, result.output
    engine = make_engine(f"sqlite:///{tmp_path / 'ota.db'}")
    assert {"vehicles", "campaign_events", "repo_files", "alembic_version"} <= set(inspect(engine).get_table_names())
    engine.dispose()


async def test_refuses_to_start_with_keys_that_do_not_match_the_stored_root(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path)):
        pass
    shutil.rmtree(tmp_path / "keys")
    with pytest.raises(NotReady, match="does not trust"):
        async with running(make_settings(tmp_path)):
            pass


def test_the_ingest_payload_cap_cannot_exceed_what_the_contract_parses() -> None:
    """Before: a cap above 16 KiB let larger messages past the edge, to be refused by the parser as
    ``malformed`` (not ``oversized``): the operator's setting did not do what it said."""
    with pytest.raises(InvalidInput, match="OTA_INGEST_MAX_PAYLOAD_BYTES"):
        Settings(ingest_max_payload_bytes=32 * 1024)
    with pytest.raises(InvalidInput, match="OTA_INGEST_MAX_PAYLOAD_BYTES"):
        Settings(ingest_max_payload_bytes=0)
    assert Settings(ingest_max_payload_bytes=4096).ingest_max_payload_bytes == 4096
