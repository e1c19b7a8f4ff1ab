"""Every operator command asks the server named by OTA_SERVER; only `ota db` and `ota keys` open a database.

The commands run from a directory with no ``./var``: once, `ota tokens create` and `ota reports
export` made an empty database there and answered from it, and `ota vehicles provision` asked
OTA_PUBLIC_URL instead of OTA_SERVER.
"""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from ota_server.cli.main import app
from ota_server.config import Settings
from ota_server.db.models import ApiToken
from ota_server.db.session import make_engine, make_session_factory
from ota_server.services.tokens import authenticate
from tests.ota_server.conftest import Env, bearer, make_settings
from tests.ota_server.helpers import launched, vin
from tests.ota_server.test_cli_ops import ota, wired

__all__ = ["wired"]  # the fixture: the CLI wired to the in-process server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The in-process server, telling cars of a broker (what a config bundle needs)."""
    return make_settings(tmp_path / "server", public_mqtt_url="mqtt://broker.test:1883")


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, far from the server's data directory."""
    place = tmp_path / "elsewhere"
    place.mkdir()
    monkeypatch.chdir(place)
    monkeypatch.delenv("OTA_DATA_DIR", raising=False)
    monkeypatch.delenv("OTA_DATABASE_URL", raising=False)
    return place


def names(place: Path) -> list[str]:
    return sorted(path.name for path in place.iterdir())


async def test_tokens_and_audit_commands_go_to_the_server(wired: Env, elsewhere: Path) -> None:
    made = await ota(wired, "tokens", "create", "--name", "alice", "--role", "operator")
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    whoami = await wired.client.get("/api/v1/whoami", headers=bearer(secret))
    assert whoami.status_code == 200 and whoami.json() == {"name": "alice", "role": "operator"}

    listed = await ota(wired, "tokens", "list")
    assert listed.exit_code == 0, listed.output
    alice = re.search(r"^(\d+)\talice\toperator\tota_", listed.stdout, re.MULTILINE)
    assert alice is not None and secret not in listed.stdout
    revoked = await ota(wired, "tokens", "revoke", alice[1], "--json")
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["revoked_at"]
    assert (await wired.client.get("/api/v1/whoami", headers=bearer(secret))).status_code == 401

    verified = await ota(wired, "audit", "verify")
    assert verified.exit_code == 0 and "audit log intact" in verified.stdout
    refused = await ota(wired, "tokens", "create", "--name", "bob", "--role", "admin", token=secret)
    assert refused.exit_code == 1 and "401" in refused.output
    wrong_role = await ota(wired, "tokens", "create", "--name", "bob", "--role", "root")
    assert wrong_role.exit_code == 2 and "--role" in wrong_role.output
    assert names(elsewhere) == []  # no ./var, no database


async def test_reports_export_goes_to_the_server_in_every_format(wired: Env, elsewhere: Path) -> None:
    recall_id = (await launched(wired.client, [vin(1), vin(2)]))["recall_id"]
    await wired.nonces()  # the notices are out (the notice log has its rows)
    for kind, fmt, start in (
        ("population", "csv", b"make,model,model_year,vin_first"),
        ("notices", "pdf", b"%PDF"),
        ("vin-status", "json", b'{\n  "kind": "vin-status"'),
        ("type-approval", "pdf", b"%PDF"),
    ):
        result = await ota(wired, "reports", "export", str(recall_id), "--kind", kind, "--format", fmt, "--out", "r")
        assert result.exit_code == 0, result.output
        assert (elsewhere / "r").read_bytes().startswith(start), kind
    unknown = await ota(wired, "reports", "export", "999", "--kind", "population", "--out", "r")
    assert unknown.exit_code == 1 and "no recall 999" in unknown.output
    for usage in (
        ["--kind", "nope"],
        ["--kind", "notices", "--format", "xml"],
        ["--kind", "completion", "--quarter", "2026Q5"],
    ):
        wrong = await ota(wired, "reports", "export", str(recall_id), *usage, "--out", "r")
        assert wrong.exit_code == 2, (usage, wrong.output)
    assert names(elsewhere) == ["r"]  # the report, and no ./var


async def test_vehicles_provision_and_revoke_ask_OTA_SERVER(wired: Env, elsewhere: Path) -> None:
    car = vin(3)
    await launched(wired.client, [car])
    provisioned = await ota(wired, "vehicles", "provision", car.lower(), "--out", "car")
    assert provisioned.exit_code == 0, provisioned.output
    assert (elsewhere / "car" / "agent.toml").is_file()
    revoked = await ota(wired, "vehicles", "revoke", car)
    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout.startswith("revoked 1 certificate(s): ")
    missing = await ota(wired, "vehicles", "provision", vin(4), "--out", "other")
    assert missing.exit_code == 1 and "404" in missing.output
    assert names(elsewhere) == ["car"]


def test_db_and_keys_commands_never_create_a_database(elsewhere: Path) -> None:
    runner = CliRunner()
    for args in (["db", "bootstrap-token"], ["keys", "init", "--offline-dir", "offline"], ["db", "upgrade"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "no database at" in result.output and str(elsewhere / "var" / "ota.db") in result.output
    assert names(elsewhere) == []

    created = runner.invoke(app, ["db", "upgrade", "--create"])
    assert created.exit_code == 0, created.output
    made = runner.invoke(app, ["db", "bootstrap-token", "--name", "recovery"])
    assert made.exit_code == 0, made.output
    assert f"database: sqlite:///{elsewhere / 'var' / 'ota.db'}" in made.output  # says which, on stderr
    engine = make_engine(f"sqlite:///{elsewhere / 'var' / 'ota.db'}")
    with make_session_factory(engine)() as session:
        actor = authenticate(session, made.stdout.strip())
        assert actor is not None and (actor.name, actor.role.value) == ("recovery", "admin")
        assert session.scalars(select(ApiToken.created_by)).all() == [f"cli:{getpass.getuser()}"]
    engine.dispose()
