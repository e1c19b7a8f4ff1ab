"""Launch edge cases: a recall matching no car, approving what is launched, identical launches at once.

Decisions: a recall that matches no car is refused (422) whether it launches at once or needs
an approval; approving a launched recall is 409 naming its campaign; a repeated launch is 409
naming the campaign, and a repeated safety request answers the one request stored, however
close together the repeats come (threads against PostgreSQL).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from ota_server.db.models import AuditEntry, Campaign, LaunchRequest
from ota_server.services import approvals, campaigns
from tests.ota_server.conftest import Env, make_settings, running
from tests.ota_server.helpers import recall_body, upload, vehicle, vin

CONCURRENT = 6


async def _recall(env: Env, *, safety: bool, **population: Any) -> int:
    """One registered car, one release, one recall filed (``population`` filters; none: every car)."""
    assert (await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)))).status_code == 201
    release = (await upload(env.client)).json()["id"]
    body = recall_body(release, **population) | {"safety_recall": safety}
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


@pytest.mark.parametrize("safety", [False, True], ids=["launch", "safety request"])
async def test_a_recall_matching_no_car_is_refused_either_way(env: Env, safety: bool) -> None:
    recall = await _recall(env, safety=safety, models=["Nobody"])
    operator = await env.headers_for("olga", "operator")
    resp = await env.client.post(f"/api/v1/recalls/{recall}/launch", headers=operator)
    assert resp.status_code == 422, resp.text
    assert "matches no vehicle" in resp.json()["detail"]
    shown = await env.get_json(f"/api/v1/recalls/{recall}")
    assert shown["launch_request"] is None  # nothing waits for an approval that could launch nothing


async def test_approving_a_launched_recall_names_its_campaign(env: Env) -> None:
    recall = await _recall(env, safety=False)
    launched = await env.client.post(f"/api/v1/recalls/{recall}/launch")
    assert launched.status_code == 201, launched.text
    bob = await env.headers_for("bob", "approver")
    resp = await env.client.post(f"/api/v1/recalls/{recall}/approve", headers=bob)
    assert resp.status_code == 409, resp.text
    assert f"already launched as campaign {launched.json()['id']}" in resp.json()["detail"]


async def test_approving_an_approved_safety_recall_names_its_campaign(env: Env) -> None:
    recall = await _recall(env, safety=True)
    olga, bob = await env.headers_for("olga", "operator"), await env.headers_for("bob", "approver")
    assert (await env.client.post(f"/api/v1/recalls/{recall}/launch", headers=olga)).status_code == 202
    approved = await env.client.post(f"/api/v1/recalls/{recall}/approve", headers=bob)
    assert approved.status_code == 201, approved.text
    for again in (f"/api/v1/recalls/{recall}/approve", f"/api/v1/recalls/{recall}/launch"):
        resp = await env.client.post(again, headers=bob if again.endswith("approve") else olga)
        assert resp.status_code == 409, resp.text
        assert resp.json()["detail"].endswith(f"already launched as campaign {approved.json()['id']}")


def _all_at_once(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
    """Hold each request thread at its first call of ``module.name`` until all of them got there.

    Every request then passes the "not launched yet" check before any of them stores anything:
    the race that otherwise happens now and then.
    """
    original: Callable[..., object] = getattr(module, name)
    barrier = threading.Barrier(CONCURRENT)
    seen = threading.local()

    def held(*args: Any, **kwargs: Any) -> object:
        if not getattr(seen, "waited", False):
            seen.waited = True
            barrier.wait(timeout=10)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, held)


async def test_identical_safety_requests_at_once_all_get_the_one_request(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        recall = await _recall(env, safety=True)
        olga = await env.headers_for("olga", "operator")
        _all_at_once(monkeypatch, approvals, "for_recall")
        answers = await asyncio.gather(
            *(env.client.post(f"/api/v1/recalls/{recall}/launch", headers=olga) for _ in range(CONCURRENT))
        )
        assert [a.status_code for a in answers] == [202] * CONCURRENT, [a.text for a in answers]
        assert len({a.text for a in answers}) == 1  # the same request, the same time
        with env.runtime.sessions() as session:
            assert session.scalar(select(func.count()).select_from(LaunchRequest)) == 1
            audited = select(func.count()).where(AuditEntry.route.like("%/launch"), AuditEntry.status == 202)
            assert session.scalar(audited) == CONCURRENT  # each request is in the audit log as answered


async def test_identical_launches_at_once_all_name_the_one_campaign(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(make_settings(tmp_path, database_url=postgres_url)) as env:
        recall = await _recall(env, safety=False)
        _all_at_once(monkeypatch, campaigns, "remedy_campaign")
        answers = await asyncio.gather(
            *(env.client.post(f"/api/v1/recalls/{recall}/launch") for _ in range(CONCURRENT))
        )
        created = [a for a in answers if a.status_code == 201]
        assert len(created) == 1, [a.text for a in answers]
        refusal = f"already launched as campaign {created[0].json()['id']}"
        refused = [a for a in answers if a.status_code == 409 and refusal in a.json()["detail"]]
        assert len(refused) == CONCURRENT - 1, [a.text for a in answers]  # as a launch after it would be told
        with env.runtime.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Campaign)) == 1
