"""A bad release stopped by the error threshold after its canary: a real server process and real agents.

The fleet runs the simulator's cars with every car's new slot failing its health check
(``FaultPlan(fail_rate=1.0)``, as ``ota-sim run --fail-rate 1.0``). The recall's plan is a
canary of 5 cars, then everyone, pausing at 3 errors. The canary rolls back, the
campaign pauses itself, and no car beyond the canary is ever notified.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from simulator.faults import FaultPlan
from simulator.fleet import make_fleet
from simulator.runner import InProcessFleet
from simulator.scenario import (
    OWNER_NOTICE,
    ScenarioOptions,
    agent_configs,
    launch_recall,
    register_fleet,
    upload_fix,
    upload_installed,
)
from tests.e2e.conftest import Stack

CARS, CANARY = 20, 5


def _poll(api: httpx.Client, campaign_id: int, done: Any, timeout: float = 120.0) -> dict[str, Any]:
    """The server's progress once ``done(progress)`` holds (real processes: poll, no timing asserted)."""
    deadline = time.monotonic() + timeout
    while True:
        progress: dict[str, Any] = api.get(f"/api/v1/campaigns/{campaign_id}/progress").json()
        if done(progress) or time.monotonic() > deadline:
            return progress
        time.sleep(0.2)


def test_error_threshold_stops_a_bad_release_after_the_canary(embedded_stack: Stack) -> None:
    client = embedded_stack.client
    fleet = make_fleet(CARS, seed=7)
    upload_installed(client, fleet)
    release = upload_fix(client, fleet, ScenarioOptions())
    register_fleet(client, fleet)
    configs = agent_configs(client, fleet)
    runner = InProcessFleet(embedded_stack.data_dir / "cars", faults=FaultPlan(fail_rate=1.0, seed=7))
    runner.start(fleet, configs)
    try:
        runner.wait_connected(timeout=60)
        recall = client.create_recall(
            {
                "campaign_number": "26V-424242",
                "title": "Battery management software may allow cell overheating",
                "defect": "The battery management software may not limit charging current.",
                "safety_risk": "An overheating cell increases the risk of a fire.",
                "remedy": f"Over-the-air update to {release['version']}.",
                "release_id": release["id"],
                "population": {"models": [fleet.model], "hardware_id": fleet.hardware_id},
                "owner_notice": OWNER_NOTICE,
                "rollout": {
                    "waves": [{"cars": CANARY}, {"percent": 100}],
                    "error_threshold_count": 3,
                    "max_retries": 0,
                },
            }
        )
        campaign = launch_recall(client, recall, embedded_stack.approver)
        cid = campaign["id"]
        headers = {"Authorization": f"Bearer {embedded_stack.token}"}
        with httpx.Client(base_url=embedded_stack.endpoints.api_url, headers=headers) as api:
            progress = _poll(
                api,
                cid,
                lambda p: p["status"] == "paused" and p["waves"][0]["errors"] + p["waves"][0]["remedied"] == CANARY,
            )
            notices = api.get(f"/api/v1/campaigns/{cid}/notices", params={"limit": 1000}).json()["items"]
    finally:
        runner.stop()
    figures = {
        "cars": CARS,
        "canary": CANARY,
        "status": progress["status"],
        "status_reason": progress["status_reason"],
        "notices_published": progress["notices_published"],
        "notified_vins": len({n["vin"] for n in notices}),
        "counts": {k: v for k, v in progress["counts"].items() if v},
        "failures_by_reason": progress["failures_by_reason"],
        "waves": [
            {k: w[k] for k in ("number", "size", "errors", "remedied", "gate", "opened")} for w in progress["waves"]
        ],
    }
    print("canary stop:", json.dumps(figures, indent=2))
    assert progress["status"] == "paused" and "error threshold crossed in wave 1:" in progress["status_reason"]
    assert progress["waves"][0]["gate"] == "tripped" and not progress["waves"][1]["opened"]
    assert progress["counts"]["rolled_back"] == CANARY
    assert progress["failures_by_reason"] == {"health_check_failed": CANARY}
    # No car beyond the canary was notified: the server published 5 notices, and the other
    # cars never heard of the campaign.
    assert progress["notices_published"] == CANARY and len(notices) == CANARY
    assert progress["counts"]["pending"] == CARS - CANARY
    canary = {n["vin"] for n in notices}
    untouched = [vin for vin in (car.vin for car in fleet.cars) if vin not in canary]
    assert len(untouched) == CARS - CANARY
