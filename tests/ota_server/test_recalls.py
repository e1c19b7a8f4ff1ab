"""Recall validation and population resolution, one filter at a time."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from ota_server.db.models import Recall
from ota_server.services import population
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import recall_body, upload, vehicle, vin


async def _release(env: Env) -> int:
    resp = await upload(env.client)
    assert resp.status_code == 201, resp.text
    release_id: int = resp.json()["id"]
    return release_id


async def _fleet(env: Env) -> None:
    d = date
    cars = [
        vehicle(vin(1), model="Sedan", model_year=2020, production_date=d(2020, 1, 10), installed_version="1.0.0"),
        vehicle(vin(2), model="Sedan", model_year=2022, production_date=d(2022, 6, 1), installed_version="1.9.0"),
        vehicle(vin(3), model="Wagon", model_year=2023, production_date=d(2023, 2, 1), installed_version="1.10.0"),
        vehicle(vin(4), model="Wagon", model_year=2024, production_date=d(2024, 3, 1), hardware_id="ecu-other"),
        vehicle(vin(5), model="Sedan", model_year=2021, production_date=d(2021, 8, 1), installed_version="dev-build"),
    ]
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})
    assert resp.status_code == 201, resp.text


async def _affected(env: Env, release_id: int, number: str, **population: Any) -> int:
    resp = await env.client.post("/api/v1/recalls", json=recall_body(release_id, number, **population))
    assert resp.status_code == 201, resp.text
    count: int = resp.json()["affected_count"]
    return count


async def test_population_filters(env: Env) -> None:
    await _fleet(env)
    rid = await _release(env)
    assert await _affected(env, rid, "24V-100") == 4  # everything with ecu-main
    assert await _affected(env, rid, "24V-101", models=["Wagon"]) == 1
    assert await _affected(env, rid, "24V-102", model_years={"min": 2021, "max": 2022}) == 2
    assert await _affected(env, rid, "24V-103", model_years={"max": 2020}) == 1
    assert await _affected(env, rid, "24V-104", vin_range={"first": vin(2), "last": vin(3).lower()}) == 2
    assert await _affected(env, rid, "24V-105", production_dates={"start": "2022-01-01"}) == 2
    assert await _affected(env, rid, "24V-106", production_dates={"end": "2021-12-31"}) == 2
    assert await _affected(env, rid, "24V-107", hardware_id="ecu-other") == 1
    # PEP 440 ordering: 1.10.0 > 1.9.0; an unparsable version is left out once bounds are given
    assert await _affected(env, rid, "24V-108", installed_versions={"min": "1.9.0"}) == 2
    assert await _affected(env, rid, "24V-109", installed_versions={"max": "1.9.0"}) == 2
    assert await _affected(env, rid, "24V-110", models=["Sedan"], installed_versions={"max": "1.0.0"}) == 1


async def test_a_population_vin_range_is_in_vin_order_the_check_digit_ignored(either_env: Env) -> None:
    """Serials 201-204 only, though the check digits of 207-212 sort between theirs as text."""
    env = either_env
    cars = [vehicle(vin(n)) for n in range(200, 214)]
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})).status_code == 201
    rid = await _release(env)
    assert await _affected(env, rid, "24V-120", vin_range={"first": vin(201), "last": vin(204)}) == 4
    backwards = await env.client.post(
        "/api/v1/recalls", json=recall_body(rid, "24V-121", vin_range={"first": vin(206), "last": vin(204)})
    )
    assert backwards.status_code == 422 and "sorts after" in backwards.text, backwards.text


async def test_recall_is_stored_and_listed(env: Env) -> None:
    await _fleet(env)
    rid = await _release(env)
    created = (await env.client.post("/api/v1/recalls", json=recall_body(rid, "24v-555", models=["Sedan"]))).json()
    assert created["campaign_number"] == "24V-555"
    assert created["campaign_id"] is None
    assert created["population"]["models"] == ["Sedan"]
    got = (await env.client.get(f"/api/v1/recalls/{created['id']}")).json()
    assert got == created
    assert [r["id"] for r in (await env.client.get("/api/v1/recalls")).json()["items"]] == [created["id"]]
    assert (await env.client.get("/api/v1/recalls/999")).status_code == 404


async def test_recall_validation(env: Env) -> None:
    rid = await _release(env)
    cases: list[tuple[dict[str, Any], int, str]] = [
        (recall_body(rid, "2024-V-1"), 422, "24V-123"),
        (recall_body(rid, "24V-12"), 422, "24V-123"),
        (recall_body(999), 422, "release 999"),
        (recall_body(rid, model_years={"min": 2024, "max": 2020}), 422, "model_years"),
        (recall_body(rid, production_dates={"start": "2024-01-01", "end": "2020-01-01"}), 422, "production_dates"),
        (recall_body(rid, installed_versions={"min": "not a version"}), 422, "not a valid version"),
        (recall_body(rid, vin_range={"first": vin(9), "last": vin(1)}), 422, "vin_range"),
        (recall_body(rid, colour=["red"]), 422, "colour"),
        (recall_body(rid) | {"title": ""}, 422, "title"),
    ]
    for body, status, fragment in cases:
        resp = await env.client.post("/api/v1/recalls", json=body)
        assert resp.status_code == status, (body, resp.text)
        assert fragment in resp.json()["detail"], resp.text


async def test_duplicate_campaign_number_is_409(env: Env) -> None:
    rid = await _release(env)
    assert (await env.client.post("/api/v1/recalls", json=recall_body(rid, "24V-200"))).status_code == 201
    resp = await env.client.post("/api/v1/recalls", json=recall_body(rid, "24V-200"))
    assert resp.status_code == 409


async def _reads_answer(env: Env, recall_id: int | None = None) -> None:
    """Everything that shows recalls still reads (operator lists, the owner's public look-up)."""
    assert (await env.client.get("/api/v1/recalls")).status_code == 200
    if recall_id is not None:
        assert (await env.client.get(f"/api/v1/recalls/{recall_id}")).status_code == 200
    lookup = await env.client.get("/api/v1/public/recalls", params={"vin": vin(1)}, headers={"Authorization": ""})
    assert lookup.status_code == 200, lookup.text


async def test_a_recall_whose_answer_cannot_be_built_is_not_stored(
    either_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write commits only once its whole answer is built: a failure leaves no row and an honest audit."""
    env = either_env
    release_id = await _release(env)

    def broken(*_args: object, **_kwargs: object) -> list[population.Member]:
        raise RuntimeError("the preview query failed")

    with monkeypatch.context() as patch:
        patch.setattr(population, "resolve_all", broken)  # every recall preview goes through it
        with pytest.raises(RuntimeError, match="preview query failed"):
            await env.client.post("/api/v1/recalls", json=recall_body(release_id, "24V-901"))
    assert (await env.client.get("/api/v1/recalls")).json()["items"] == []
    entries = (await env.client.get("/api/v1/audit", params={"limit": 1000})).json()["items"]
    posted = [e for e in entries if e["route"] == "/api/v1/recalls" and e["method"] == "POST"]
    assert [e["status"] for e in posted] == [500] and "created" not in posted[0]["target"]
    created = await env.client.post("/api/v1/recalls", json=recall_body(release_id, "24V-901"))
    assert created.status_code == 201, created.text  # nothing half-stored blocks the number
    await _reads_answer(env, created.json()["id"])


async def test_nul_in_a_population_is_refused_and_every_read_still_answers(either_env: Env) -> None:
    """Issue 14: ``"models": ["S\\u0000edan"]`` was stored on PostgreSQL, then every read of recalls answered 500."""
    env = either_env
    release_id = await _release(env)
    body = recall_body(release_id, "24V-902", models=["S\u0000edan"])
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 422, resp.text
    assert "population.models[0]" in resp.json()["detail"] and "U+0000" in resp.json()["detail"]
    assert (await env.client.get("/api/v1/recalls")).json()["items"] == []
    await _reads_answer(env)


async def test_plans_that_would_not_run_as_written_are_refused(env: Env) -> None:
    """Issue 14: these plans were filed silently (or broke the scheduler later)."""
    release_id = await _release(env)
    window = {"start": "01:00", "end": "05:00"}
    refused: list[tuple[dict[str, Any], str]] = [
        ({"waves": [{"percent": 20}]}, "last wave takes every car left"),
        ({"waves": [{"cars": 5}, {"percent": 50}]}, "last wave takes every car left"),
        ({"waves": [{"cars": 5}]}, "last wave takes every car left"),
        ({"waves": [{"percent": 30}, {"percent": 10}, {"percent": 100}]}, "less than the 30%"),
        ({"waves": [{"percent": 60}, {"percent": 60}, {"percent": 100}]}, "100% or more"),
        ({"windows": [window | {"end": "01:00"}]}, "two different times"),
        ({"windows": [window | {"start": "01:00+05:00"}]}, "UTC offset"),
        ({"windows": [window | {"end": "05:00Z"}]}, "UTC offset"),
        ({"device_timeout_s": 1e308}, "device_timeout_s"),
        ({"ack_timeout_s": 10**12}, "ack_timeout_s"),
        ({"retry_backoff_s": 1e300}, "retry_backoff_s"),
        ({"retry_backoff_max_s": 1e300}, "retry_backoff_max_s"),
        ({"error_threshold_count": 10**30}, "error_threshold_count"),
        ({"rate": {"per_minute": 10, "ramp": {"start_per_minute": 1, "every_notified": 10**30}}}, "every_notified"),
        ({"start_at": "0001-01-01T00:00:00+05:00"}, "2000 to 2100"),
        ({"start_at": "9999-12-31T23:59:59-05:00"}, "2000 to 2100"),
        ({"start_at": "2020-01-01T00:00:00Z"}, "in the past"),
        ({"start_at": "2030-01-01T00:00:00Z"}, "more than a year ahead"),
        ({"default_time_zone": "Europe"}, "IANA"),
        ({"default_time_zone": "localtime"}, "IANA"),
    ]
    for n, (plan, words) in enumerate(refused, start=100):
        body = recall_body(release_id, f"24V-{n}") | {"rollout": plan}
        resp = await env.client.post("/api/v1/recalls", json=body)
        assert resp.status_code == 422, (plan, resp.text)
        assert words in resp.json()["detail"], (plan, resp.text)
    for n, filters in enumerate(
        [{"production_dates": {"start": "0001-01-01"}}, {"production_dates": {"end": "9999-12-31"}}], start=200
    ):
        resp = await env.client.post("/api/v1/recalls", json=recall_body(release_id, f"24V-{n}", **filters))
        assert resp.status_code == 422 and "production_dates" in resp.json()["detail"], resp.text
    assert (await env.client.get("/api/v1/recalls")).json()["items"] == []
    accepted = {
        "waves": [{"cars": 5}, {"percent": 10}, {"percent": 20}, {"percent": 100}],
        "windows": [{"start": "23:00", "end": "05:00"}],
        "start_at": (env.clock() + timedelta(days=30)).isoformat(),
        "default_time_zone": "EST5EDT",
        "device_timeout_s": 86400,
    }
    resp = await env.client.post("/api/v1/recalls", json=recall_body(release_id, "24V-300") | {"rollout": accepted})
    assert resp.status_code == 201, resp.text
    assert resp.json()["rollout"]["waves"][-1] == {"cars": None, "percent": 100.0}


async def test_recalls_filed_under_older_rules_stay_readable(either_env: Env) -> None:
    """The filing rules are not re-judged on what is stored: a plan or population filed before them still reads."""
    env = either_env
    release_id = await _release(env)
    created = await env.client.post("/api/v1/recalls", json=recall_body(release_id, "24V-400"))
    assert created.status_code == 201, created.text
    old_plan = {
        "waves": [{"percent": 50}, {"percent": 50}],
        "windows": [{"start": "01:00", "end": "01:00"}],
        "default_time_zone": "localtime",
        "start_at": "2001-01-01T00:00:00Z",
    }
    with env.runtime.sessions() as session:
        recall = session.get(Recall, created.json()["id"])
        assert recall is not None
        recall.rollout = old_plan
        recall.population = {"production_dates": {"start": "1901-01-01"}, "model_years": {"min": 1}}
        session.commit()
    got = await env.client.get(f"/api/v1/recalls/{recall.id}")
    assert got.status_code == 200, got.text
    assert got.json()["rollout"]["waves"][-1]["percent"] == 50
    assert got.json()["rollout"]["default_time_zone"] == "localtime"
    await _reads_answer(env, recall.id)
