"""The real server: in-process with the embedded amqtt broker, and as the ``ota serve`` subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from firmware_bundles.vin import make_vin
from ota_server.config import Settings
from ota_server.http.server import OtaServer
from tests.ota_server.mqtt_flow import one_recall


async def test_embedded_broker_end_to_end(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=0)
    async with OtaServer(settings) as info:
        assert info.mqtt_url.startswith("mqtt://127.0.0.1:") and not info.mqtt_url.endswith(":1883")
        vin = make_vin("1HG", "CM826", "N", "A", 1)
        token = settings.admin_token_file.read_text().strip()
        progress = await one_recall(info.api_url, info.mqtt_url, vin, "24V-001", token=token)
    assert progress["counts"]["remedied"] == 1


async def test_keys_and_roots_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=0)
    roots = []
    for _ in range(2):
        async with OtaServer(settings) as info, httpx.AsyncClient(base_url=info.api_url) as api:
            roots.append((await api.get("/repo/image/metadata/1.root.json")).content)
            roots.append((await api.get("/repo/image/metadata/timestamp.json")).content)
    assert roots[0] == roots[2]
    assert roots[1] == roots[3]  # nothing re-signed without a reason


async def test_the_embedded_broker_keeps_its_port_across_a_restart(tmp_path: Path) -> None:
    """Outside test (issue 18): cars set up against the embedded broker lost it when `ota serve` restarted."""
    settings = Settings(data_dir=tmp_path, port=0)
    urls = []
    for _ in range(2):
        async with OtaServer(settings) as info:
            urls.append(info.mqtt_url)
    assert urls[0] == urls[1], urls
    # Taken meanwhile by another program: another port, said in the log, and remembered from then on.
    taken = socket.socket()
    taken.bind(("127.0.0.1", int(urls[0].rsplit(":", 1)[1])))
    taken.listen()
    try:
        async with OtaServer(settings) as info:
            moved = info.mqtt_url
    finally:
        taken.close()
    assert moved != urls[0]
    async with OtaServer(settings) as info:
        assert info.mqtt_url == moved


def test_ota_serve_subprocess_writes_ready_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTA_")} | {"OTA_PORT": "0"}
    command = [
        sys.executable,
        "-m",
        "ota_server",
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--ready-file",
        str(ready),
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "ota serve exited early"
            assert time.monotonic() < deadline, "timed out waiting for the ready file"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        assert info["repo_url"] == info["api_url"] + "/repo"
        assert info["mqtt_url"].startswith("mqtt://127.0.0.1:")
        with httpx.Client(base_url=info["api_url"]) as api:
            assert api.get("/healthz").json() == {"status": "ok"}
            assert api.get("/docs").status_code == 200
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert code == 0, output
        assert "Application shutdown complete" in output
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
