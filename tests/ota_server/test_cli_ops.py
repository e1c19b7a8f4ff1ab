"""The operator CLI (`ota releases|vehicles import|recalls|campaigns`) against the in-process server.

The CLI is synchronous; the app lives on the test's event loop. Each command runs in a worker
thread, and its HTTP requests are carried back to the loop by :class:`LoopTransport`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from firmware_bundles.bundle import sample_image
from ota_server.cli import common as cli_common
from ota_server.cli.main import app
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import HW, vin

CSV_HEADER = "vin,make,model,model_year,production_date,ecu_serial,hardware_id,installed_version,time_zone\n"


class LoopTransport(httpx.BaseTransport):
    """A sync transport that runs each request on ``loop`` through the app's ASGI transport."""

    def __init__(self, asgi: httpx.ASGITransport, loop: asyncio.AbstractEventLoop) -> None:
        self._asgi = asgi
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=request.read())

        async def send() -> httpx.Response:
            response = await self._asgi.handle_async_request(copy)
            body = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=body)

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result(timeout=60)


@pytest.fixture
async def wired(env: Env, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    transport = LoopTransport(httpx.ASGITransport(app=env.app), asyncio.get_running_loop())
    monkeypatch.setattr(cli_common, "transport_override", transport)
    monkeypatch.delenv("OTA_TOKEN", raising=False)
    monkeypatch.delenv("OTA_SERVER", raising=False)
    yield env


async def ota(env: Env, *args: str, token: str | None = None) -> Result:
    """Run `ota ARGS` with OTA_TOKEN (the admin's unless given) in a worker thread."""
    if token is None:
        token = env.runtime.settings.admin_token_file.read_text().strip()
    environment = {"OTA_TOKEN": token, "OTA_SERVER": "http://ota.test"}
    runner = CliRunner()
    return await asyncio.to_thread(lambda: runner.invoke(app, list(args), env=environment))


async def token_for(env: Env, name: str, role: str) -> str:
    return (await env.headers_for(name, role))["Authorization"].removeprefix("Bearer ")


def write_csv(path: Path, vins: list[str], bad_line_vin: str | None = None) -> Path:
    rows = [f"{v},Acme,Sedan,2022,2022-05-01,S-{v[-6:]},{HW},1.0.0,Europe/Berlin\n" for v in vins]
    if bad_line_vin is not None:
        rows.insert(1, f"{bad_line_vin},Acme,Sedan,2022,2022-05-01,S-BAD,{HW},1.0.0,\n")
    path.write_text(CSV_HEADER + "".join(rows))
    return path


RECALL_YAML = """\
campaign_number: 24V-777
title: Brake assist software
defect: Brake assist may disengage
safety_risk: Longer stopping distance
remedy: Update brake controller software
release_id: {release_id}
safety_recall: {safety}
requires_consent: false
population:
  models: [Sedan]
  production_dates:
    start: 2022-01-01
owner_notice:
  purpose: Brake assist may disengage; this update fixes it
  what_changes: Brake assist stays engaged under hard braking
  expected_minutes: 20
  unavailable_functions: [driving]
  contact:
    name: Dana Smith
    role: Recall coordinator
    phone: +1 555 0100
    email: recalls@example.com
"""


async def build_and_upload(env: Env, tmp_path: Path) -> int:
    image = tmp_path / "fix.img"
    image.write_bytes(sample_image(HW, "1.1.0", size=4096))
    bundle = tmp_path / "fix.otab"
    built = await ota(
        env, "releases", "build", "--image", str(image), "--hardware-id", HW, "--version", "1.1.0",
        "--counter", "2", "--out", str(bundle), "--json",
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["release_counter"] == 2 and bundle.stat().st_size > 4096
    uploaded = await ota(
        env, "releases", "upload", str(bundle), "--hardware-id", HW, "--version", "1.1.0", "--counter", "2", "--json"
    )
    assert uploaded.exit_code == 0, uploaded.output
    release_id: int = json.loads(uploaded.stdout)["id"]
    return release_id


async def recall_from_yaml(env: Env, tmp_path: Path, release_id: int, *, safety: bool) -> int:
    path = tmp_path / "recall.yaml"
    path.write_text(RECALL_YAML.format(release_id=release_id, safety=str(safety).lower()))
    created = await ota(env, "recalls", "create", str(path), "--json")
    assert created.exit_code == 0, created.output
    recall_id: int = json.loads(created.stdout)["id"]
    return recall_id


async def test_build_upload_and_list_releases(wired: Env, tmp_path: Path) -> None:
    release_id = await build_and_upload(wired, tmp_path)
    listed = await ota(wired, "releases", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.stdout)] == [release_id]
    human = await ota(wired, "releases", "list")
    assert human.exit_code == 0 and "1.1.0" in human.stdout


async def test_csv_import_registers_every_car(wired: Env, tmp_path: Path) -> None:
    vins = [vin(i) for i in range(1, 4)]
    result = await ota(wired, "vehicles", "import", str(write_csv(tmp_path / "cars.csv", vins)))
    assert result.exit_code == 0, result.output
    assert "imported 3 vehicles" in result.stdout
    car = await wired.get_json(f"/api/v1/vehicles/{vins[2]}")
    assert car["time_zone"] == "Europe/Berlin"


async def test_csv_import_with_a_bad_line_names_it_and_stores_nothing(wired: Env, tmp_path: Path) -> None:
    vins = [vin(i) for i in range(1, 4)]
    result = await ota(wired, "vehicles", "import", str(write_csv(tmp_path / "cars.csv", vins, "NOT-A-VIN")))
    assert result.exit_code == 1, result.output
    assert "line 3" in result.stderr and "NOT-A-VIN" in result.stderr and "422" in result.stderr
    assert "nothing was imported" in result.stderr
    assert (await wired.client.get(f"/api/v1/vehicles/{vins[0]}")).status_code == 404


async def test_csv_import_names_the_line_of_every_kind_of_refusal(wired: Env, tmp_path: Path) -> None:
    """Issue 14: a VIN already registered came without its line, and messages had a stray ': :'."""
    registered, others = vin(9), [vin(i) for i in range(1, 4)]
    assert (await ota(wired, "vehicles", "import", str(write_csv(tmp_path / "one.csv", [registered])))).exit_code == 0
    good = vin(5)
    bad_digit = good[:8] + ("0" if good[8] != "0" else "1") + good[9:]
    cases = [
        ([*others, registered], "line 5", f"VIN {registered} is already registered", "409"),
        ([others[0], others[1], others[0]], "line 4", "appears twice", "422"),
        ([others[0], bad_digit], "line 3", "check digit", "422"),
    ]
    for n, (vins, line, words, status) in enumerate(cases):
        result = await ota(wired, "vehicles", "import", str(write_csv(tmp_path / f"cars{n}.csv", vins)))
        assert result.exit_code == 1, result.output
        assert f"{line} (VIN " in result.stderr and words in result.stderr and status in result.stderr, result.stderr
        assert ": :" not in result.stderr and "nothing was imported" in result.stderr, result.stderr
    assert (await wired.client.get(f"/api/v1/vehicles/{others[0]}")).status_code == 404


async def test_csv_without_a_required_column_is_a_usage_error(wired: Env, tmp_path: Path) -> None:
    path = tmp_path / "cars.csv"
    path.write_text("vin,model\n1HG,Sedan\n")
    result = await ota(wired, "vehicles", "import", str(path))
    assert result.exit_code == 2
    assert "missing column" in result.output


async def test_recall_from_yaml_then_safety_launch_approved_by_a_second_person(wired: Env, tmp_path: Path) -> None:
    vins = [vin(i) for i in range(1, 6)]
    assert (await ota(wired, "vehicles", "import", str(write_csv(tmp_path / "cars.csv", vins)))).exit_code == 0
    release_id = await build_and_upload(wired, tmp_path)
    recall_id = await recall_from_yaml(wired, tmp_path, release_id, safety=True)
    recalls = json.loads((await ota(wired, "recalls", "list", "--json")).stdout)
    assert recalls[0]["affected_count"] == 5 and recalls[0]["population"]["production_dates"]["start"] == "2022-01-01"

    operator = await token_for(wired, "olga", "operator")
    approver = await token_for(wired, "bob", "approver")
    requested = await ota(wired, "recalls", "launch", str(recall_id), token=operator)
    assert requested.exit_code == 0, requested.output
    assert "awaiting approval" in requested.stdout

    refused = await ota(wired, "recalls", "approve", str(recall_id), token=operator)  # not an approver
    assert refused.exit_code == 1
    assert "403" in refused.stderr

    approved = await ota(wired, "recalls", "approve", str(recall_id), "--json", token=approver)
    assert approved.exit_code == 0, approved.output
    campaign = json.loads(approved.stdout)
    assert campaign["recall_id"] == recall_id and campaign["population"] == 5

    listed = await ota(wired, "campaigns", "list", "--json")
    assert [c["id"] for c in json.loads(listed.stdout)] == [campaign["id"]]


async def test_pause_resume_watch_and_show(wired: Env, tmp_path: Path) -> None:
    vins = [vin(i) for i in range(1, 4)]
    assert (await ota(wired, "vehicles", "import", str(write_csv(tmp_path / "cars.csv", vins)))).exit_code == 0
    release_id = await build_and_upload(wired, tmp_path)
    recall_id = await recall_from_yaml(wired, tmp_path, release_id, safety=False)
    launched = await ota(wired, "recalls", "launch", str(recall_id), "--json")
    assert launched.exit_code == 0, launched.output
    campaign_id = str(json.loads(launched.stdout)["id"])

    paused = await ota(wired, "campaigns", "pause", campaign_id, "--reason", "checking a report", "--json")
    assert paused.exit_code == 0, paused.output
    assert json.loads(paused.stdout)["status"] == "paused"
    again = await ota(wired, "campaigns", "pause", campaign_id)  # already paused: the server refuses
    assert again.exit_code == 1 and "409" in again.stderr

    resumed = await ota(wired, "campaigns", "resume", campaign_id)
    assert resumed.exit_code == 0, resumed.output
    assert "active" in resumed.stdout

    watched = await ota(wired, "campaigns", "watch", campaign_id, "--once", "--json")
    assert watched.exit_code == 0, watched.output
    progress = json.loads(watched.stdout)
    assert progress["campaign_id"] == int(campaign_id) and progress["population"] == 3
    assert sum(progress["counts"].values()) == 3
    assert progress["status"] == "active"

    bars = await ota(wired, "campaigns", "watch", campaign_id, "--once")
    assert bars.exit_code == 0, bars.output
    assert "By state" in bars.stdout and "By wave" in bars.stdout

    shown = await ota(wired, "campaigns", "show", campaign_id, "--json")
    assert json.loads(shown.stdout)["campaign"]["id"] == int(campaign_id)

    retried = await ota(wired, "campaigns", "retry", campaign_id, "--json")
    assert retried.exit_code == 0 and json.loads(retried.stdout)["vehicles"] == 0

    cancelled = await ota(wired, "campaigns", "cancel", campaign_id, "--reason", "superseded")
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout

    # A cancelled campaign is finished: watching (JSON lines, or the live bars) ends at once.
    lines = await ota(wired, "campaigns", "watch", campaign_id, "--json", "--interval", "0.2")
    assert lines.exit_code == 0, lines.output
    assert [json.loads(line)["status"] for line in lines.stdout.splitlines()] == ["cancelled"]
    live = await ota(wired, "campaigns", "watch", campaign_id)
    assert live.exit_code == 0, live.output


async def test_errors_and_exit_codes(wired: Env, tmp_path: Path) -> None:
    missing = await ota(wired, "campaigns", "show", "99")
    assert missing.exit_code == 1
    assert "404" in missing.stderr and "error:" in missing.stderr

    no_token = await ota(wired, "recalls", "list", token="")
    assert no_token.exit_code == 1 and "401" in no_token.stderr

    usage = await ota(wired, "campaigns", "pause", "not-a-number")
    assert usage.exit_code == 2

    broken = tmp_path / "recall.yaml"
    broken.write_text("title: [unclosed\n")
    assert (await ota(wired, "recalls", "create", str(broken))).exit_code == 2

    invalid = tmp_path / "recall.json"
    invalid.write_text(json.dumps({"title": "no release"}))
    refused = await ota(wired, "recalls", "create", str(invalid))
    assert refused.exit_code == 1 and "422" in refused.stderr and "release_id" in refused.stderr

    release_id = await build_and_upload(wired, tmp_path)
    no_person = tmp_path / "no-person.yaml"
    no_person.write_text(RECALL_YAML.format(release_id=release_id, safety="false").split("owner_notice:")[0])
    refused = await ota(wired, "recalls", "create", str(no_person))
    assert refused.exit_code == 1 and "must carry an owner notice with a person to call" in refused.stderr
    assert "owner_notice.contact (name, role, phone, email)" in refused.stderr
