"""The same recall on the real parts: PostgreSQL and Mosquitto on this machine."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from simulator.fleet import make_fleet
from simulator.operator_client import OperatorClient
from simulator.runner import InProcessFleet
from simulator.scenario import ScenarioOptions, run_recall, second_person
from simulator.server_process import ServerProcess

STEPS = ["notified", "downloading", "verifying", "installing", "rebooting", "remedied"]


def test_recall_on_postgres_and_mosquitto(tmp_path: Path, postgres_url: str, mosquitto_url: str) -> None:
    env = {**os.environ, "OTA_DATABASE_URL": postgres_url, "OTA_MQTT_URL": mosquitto_url}
    fleet = make_fleet(10)
    server = ServerProcess(tmp_path / "server", env=env)
    with server as endpoints, OperatorClient(endpoints.api_url, token=server.admin_token()) as client:
        assert endpoints.mqtt_url == mosquitto_url  # no embedded broker was started
        runner = InProcessFleet(tmp_path / "cars")
        with second_person(client, "safety-officer") as approver:
            summary = run_recall(client, fleet, runner, ScenarioOptions(timeout=180), None, approver=approver)
        status = client.vehicle_status(fleet.cars[0].vin)

    assert (summary.cars, summary.remedied, summary.failed) == (10, 10, 0)
    (campaign,) = status["campaigns"]
    assert campaign["state"] == "remedied"
    assert [event["state"] for event in campaign["history"]] == STEPS

    # the truth is in PostgreSQL, not in the server's memory
    with psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql")) as conn:
        states = conn.execute(
            "SELECT state, count(*) FROM campaign_vehicles WHERE campaign_id = %s GROUP BY state",
            (summary.campaign_id,),
        ).fetchall()
    assert states == [("remedied", 10)]
