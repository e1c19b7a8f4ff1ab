"""Vehicle tags and saved groups: tagging, filters, counts computed when read, recalls filed on a group."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from ota_server.cli import common as cli_common
from ota_server.services import group_filter
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import provision, recall_body, upload, vehicle, vin
from tests.ota_server.test_cli_ops import LoopTransport, ota
from tests.ota_server.test_inventory import manifest


async def _fleet(env: Env, *cars: dict[str, Any]) -> None:
    resp = await env.client.post("/api/v1/vehicles/batch", json={"vehicles": list(cars)})
    assert resp.status_code == 201, resp.text


async def _tag(env: Env, vin_: str, tag: str) -> dict[str, Any]:
    resp = await env.client.put(f"/api/v1/vehicles/{vin_}/tags/{tag}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _vins(env: Env, url: str) -> list[str]:
    body = await env.get_json(url)
    items = body["items"]
    assert isinstance(items, list)
    return [car["vin"] for car in items]


async def _group(env: Env, name: str, **spec: Any) -> dict[str, Any]:
    resp = await env.client.post("/api/v1/groups", json={"name": name, "filter": spec})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def _count(env: Env, ref: str) -> object:
    return (await env.get_json(f"/api/v1/groups/{ref}"))["vehicle_count"]


async def test_tags_are_added_shown_filtered_and_removed(env: Env) -> None:
    a, b = vin(1), vin(2)
    await _fleet(env, vehicle(a), vehicle(b))
    assert (await _tag(env, a, "Fleet-A"))["tags"] == ["fleet-a"]
    assert (await _tag(env, a, "fleet-a"))["tags"] == ["fleet-a"]  # same tag whatever the case: kept once
    assert (await _tag(env, a, "depot:1"))["tags"] == ["depot:1", "fleet-a"]
    assert (await env.get_json(f"/api/v1/vehicles/{a}"))["tags"] == ["depot:1", "fleet-a"]
    assert await _vins(env, "/api/v1/vehicles?tag=FLEET-A") == [a]
    assert await _vins(env, "/api/v1/vehicles?tag=other") == []

    resp = await env.client.delete(f"/api/v1/vehicles/{a}/tags/Fleet-A")
    assert resp.status_code == 200, resp.text
    assert resp.json()["tags"] == ["depot:1"]
    assert await _vins(env, "/api/v1/vehicles?tag=fleet-a") == []
    again = await env.client.delete(f"/api/v1/vehicles/{a}/tags/fleet-a")
    assert again.status_code == 404
    assert "has no tag 'fleet-a'" in again.json()["detail"]

    audit = [json.loads(line) for line in (await env.client.get("/api/v1/audit/export")).text.splitlines()]
    tagged = [(e["method"], e["target"]) for e in audit if e["route"] == "/api/v1/vehicles/{vin}/tags/{tag}"]
    assert ("DELETE", {"vin": a, "tag": "Fleet-A"}) in tagged


async def test_bad_tags_and_batches_are_refused_whole_with_clear_messages(env: Env) -> None:
    a, b, missing = vin(1), vin(2), vin(3)
    await _fleet(env, vehicle(a), vehicle(b))
    for bad in ("a%20b", "-lead", "x" * 33, "caf%C3%A9", "tab%09"):
        resp = await env.client.put(f"/api/v1/vehicles/{a}/tags/{bad}")
        assert resp.status_code == 422, (bad, resp.text)
        assert "is not a tag" in resp.text
    unknown = await env.client.post("/api/v1/vehicle-tags", json={"tag": "recall-pilot", "vins": [a, missing]})
    assert unknown.status_code == 404
    assert missing in unknown.json()["detail"] and "no car was changed" in unknown.json()["detail"]
    assert (await env.get_json(f"/api/v1/vehicles/{a}"))["tags"] == []  # all or nothing
    too_many = await env.client.post("/api/v1/vehicle-tags", json={"tag": "t", "vins": [a] * 1001})
    assert too_many.status_code == 422

    done = await env.client.post("/api/v1/vehicle-tags", json={"tag": "Pilot", "vins": [a, b, a.lower()]})
    assert done.status_code == 200, done.text
    assert done.json() == {"tag": "pilot", "changed": 2, "unchanged": 0}
    repeat = await env.client.post("/api/v1/vehicle-tags", json={"tag": "pilot", "vins": [a]})
    assert repeat.json() == {"tag": "pilot", "changed": 0, "unchanged": 1}
    removed = await env.client.post("/api/v1/vehicle-tags/remove", json={"tag": "pilot", "vins": [a]})
    assert removed.json() == {"tag": "pilot", "changed": 1, "unchanged": 0}
    assert await _vins(env, "/api/v1/vehicles?tag=pilot") == [b]

    for n in range(31):
        await _tag(env, b, f"t{n}")
    full = await env.client.put(f"/api/v1/vehicles/{b}/tags/one-more")
    assert full.status_code == 422 and "32 tags already" in full.json()["detail"]
    batch_full = await env.client.post("/api/v1/vehicle-tags", json={"tag": "one-more", "vins": [a, b]})
    assert batch_full.status_code == 422
    assert (await env.get_json(f"/api/v1/vehicles/{a}"))["tags"] == []


async def test_a_group_counts_its_cars_when_read(env: Env) -> None:
    cars = [vin(n) for n in range(1, 5)]
    await _fleet(env, *(vehicle(v) for v in cars[:3]), vehicle(cars[3], model="Coupe"))
    await provision(env.client, cars)
    tagged = await _group(env, "Depot one", models=["Sedan"], tags_all=["depot-1"])
    assert tagged["vehicle_count"] == 0
    await _tag(env, cars[0], "depot-1")
    await _tag(env, cars[3], "depot-1")  # a Coupe: not in the group
    assert await _count(env, "depot ONE") == 1
    assert await _count(env, str(tagged["id"])) == 1

    reported = await _group(env, "Reported old", installed_versions={"max": "1.0.0", "basis": "reported"})
    installed = await _group(env, "Running old", installed_versions={"max": "1.0.0"})
    declared = await _group(env, "Declared old", installed_versions={"max": "1.0.0", "basis": "declared"})
    assert (reported["vehicle_count"], installed["vehicle_count"], declared["vehicle_count"]) == (0, 4, 4)
    await env.inject(manifest(cars[1], 1, version="1.0.0"))  # the car's signed word now backs its version
    assert await _count(env, "reported old") == 1
    await env.inject(manifest(cars[1], 2, version="1.1.0"))  # it reports the fix: no longer on 1.0.0
    await env.inject(manifest(cars[2], 1, version="1.1.0"))
    assert await _count(env, "reported old") == 0
    assert await _count(env, "running old") == 2
    assert await _count(env, "declared old") == 4  # registration said 1.0.0 and still says so

    any_of = await _group(env, "Either depot", tags_any=["depot-1", "depot-2"])
    await _tag(env, cars[2], "depot-2")
    assert any_of["vehicle_count"] == 2 and await _count(env, "either depot") == 3
    by_range = await _group(env, "First two", vin_range={"first": cars[0].lower(), "last": cars[1]})
    assert by_range["filter"]["vin_range"] == {"first": cars[0], "last": cars[1]}
    assert by_range["vehicle_count"] == 2

    page = await env.get_json("/api/v1/groups?limit=2")
    assert [g["name"] for g in page["items"]] == ["Declared old", "Depot one"]
    rest = await env.get_json(f"/api/v1/groups?limit=10&cursor={page['next_cursor']}")
    names = [g["name"] for g in rest["items"]]
    assert names == ["Either depot", "First two", "Reported old", "Running old"] and rest["next_cursor"] is None

    newest = await env.get_json("/api/v1/groups?sort=-id&limit=1")
    assert [g["name"] for g in newest["items"]] == ["First two"]
    first = await env.get_json("/api/v1/groups/either%20depot/vehicles?limit=2")
    second = await env.get_json(f"/api/v1/groups/either%20depot/vehicles?limit=2&cursor={first['next_cursor']}")
    listed = [c["vin"] for c in [*first["items"], *second["items"]]]
    assert listed == sorted([cars[0], cars[2], cars[3]]) and second["next_cursor"] is None


async def test_bad_groups_are_refused_with_clear_messages(env: Env) -> None:
    await _group(env, "Pilot fleet", models=["Sedan"])
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"name": "PILOT FLEET"}, 409, "exists already"),
        ({"name": "  "}, 422, "give the group a name"),
        ({"name": "123"}, 422, "needs a letter"),
        ({"name": "x", "filter": {"model_years": {"min": 2024, "max": 2020}}}, 422, "min 2024 is after max 2020"),
        ({"name": "x", "filter": {"installed_versions": {"min": "banana"}}}, 422, "not a valid version"),
        ({"name": "x", "filter": {"vin_range": {"first": "Z", "last": "A"}}}, 422, "sorts after"),
        ({"name": "x", "filter": {"tags_all": ["no spaces"]}}, 422, "is not a tag"),
        ({"name": "x", "filter": {"colour": "red"}}, 422, "colour"),
        ({"name": "x", "filter": {"models": []}}, 422, "models"),
        ({"name": "a\x00b"}, 422, "U+0000"),
        ({"name": "a/b"}, 422, "no '/'"),
    ]
    for body, code, words in cases:
        resp = await env.client.post("/api/v1/groups", json=body)
        assert resp.status_code == code, (body, resp.text)
        assert words in resp.text, (body, resp.text)
    missing = await env.client.get("/api/v1/groups/nope")
    assert missing.status_code == 404 and "no group 'nope'" in missing.json()["detail"]
    assert (await env.client.get("/api/v1/groups?cursor=junk")).status_code == 422
    control = await env.client.get("/api/v1/groups/a%01b")
    assert control.status_code == 422 and "U+0001 at position 1" in control.text
    assert (await env.client.delete("/api/v1/groups/nope")).status_code == 404
    gone = await env.client.delete("/api/v1/groups/pilot%20fleet")
    assert gone.status_code == 200 and gone.json()["name"] == "Pilot fleet"
    assert (await env.client.get("/api/v1/groups/pilot%20fleet")).status_code == 404


async def test_a_recall_filed_on_a_group_takes_exactly_its_cars_and_keeps_its_filter(either_env: Env) -> None:
    env = either_env
    sedans = [vin(n) for n in range(1, 4)]
    coupe = vin(4)
    await _fleet(env, *(vehicle(v) for v in sedans), vehicle(coupe, model="Coupe"))
    await provision(env.client, [*sedans, coupe])
    for car in (sedans[0], sedans[1], coupe):
        await _tag(env, car, "pilot")
    group = await _group(env, "Pilot sedans", models=["Sedan"], tags_all=["pilot"])
    release = await upload(env.client)
    assert release.status_code == 201, release.text

    unknown = await env.client.post("/api/v1/recalls", json=recall_body(release.json()["id"], group="nope"))
    assert unknown.status_code == 422 and "population.group: no group 'nope'" in unknown.json()["detail"]
    forged = recall_body(release.json()["id"], group="pilot sedans", group_filter={"models": ["Coupe"]})
    refused = await env.client.post("/api/v1/recalls", json=forged)
    assert refused.status_code == 422 and "set by the server" in refused.json()["detail"]

    body = recall_body(release.json()["id"], group="PILOT SEDANS", model_years={"min": 2020})
    resp = await env.client.post("/api/v1/recalls", json=body)
    assert resp.status_code == 201, resp.text
    recall = resp.json()
    assert recall["affected_count"] == 2
    assert recall["population"]["group"] == "Pilot sedans" and recall["population"]["group_id"] == group["id"]
    copied = {k: v for k, v in recall["population"]["group_filter"].items() if v is not None}
    assert copied == {"models": ["Sedan"], "tags_all": ["pilot"]}

    # The group deleted and saved again with another filter: the filed recall goes by its copy.
    assert (await env.client.delete("/api/v1/groups/pilot%20sedans")).status_code == 200
    await _group(env, "Pilot sedans", models=["Coupe"])
    kept = await env.get_json(f"/api/v1/recalls/{recall['id']}")
    assert kept["population"] == recall["population"] and kept["affected_count"] == 2
    assert sorted(await _vins(env, f"/api/v1/vehicles?recall={recall['id']}")) == sorted(sedans[:2])

    campaign = await env.client.post(f"/api/v1/recalls/{recall['id']}/launch")
    assert campaign.status_code == 201, campaign.text
    assert campaign.json()["population"] == 2
    members = await _vins(env, f"/api/v1/vehicles?campaign={campaign.json()['id']}")
    assert sorted(members) == sorted(sedans[:2])


async def test_the_cli_tags_cars_and_saves_lists_shows_and_removes_groups(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cli_common, "transport_override", LoopTransport(httpx.ASGITransport(app=env.app), asyncio.get_running_loop())
    )
    monkeypatch.delenv("OTA_TOKEN", raising=False)
    monkeypatch.delenv("OTA_SERVER", raising=False)
    a, b = vin(1), vin(2)
    await _fleet(env, vehicle(a), vehicle(b, model_year=2019))
    tagged = await ota(env, "vehicles", "tag", a.lower(), "Pilot", "depot-1")
    assert tagged.exit_code == 0, tagged.output
    assert f"{a}: tags depot-1, pilot" in tagged.output
    refused = await ota(env, "vehicles", "tag", a, "no good")
    assert refused.exit_code == 1 and "is not a tag" in refused.output

    created = await ota(
        env, "groups", "create", "Pilot 2020+", "--model", "Sedan", "--year-from", "2020", "--tag", "pilot"
    )
    assert created.exit_code == 0, created.output
    assert "'Pilot 2020+': 1 car(s)" in created.output
    versions = await ota(
        env, "groups", "create", "Old", "--version-max", "1.0.0", "--version-basis", "declared", "--json"
    )
    assert versions.exit_code == 0, versions.output
    assert json.loads(versions.output)["filter"]["installed_versions"]["basis"] == "declared"
    again = await ota(env, "groups", "create", "pilot 2020+")
    assert again.exit_code == 1 and "409" in again.output

    await ota(env, "vehicles", "tag", b, "pilot")  # a 2019 car: still not in the group
    shown = await ota(env, "groups", "show", "PILOT 2020+")
    assert shown.exit_code == 0 and "1 car(s) now" in shown.output and "tags_all ['pilot']" in shown.output
    untagged = await ota(env, "vehicles", "untag", a, "PILOT")
    assert untagged.exit_code == 0 and f"{a}: tags depot-1" in untagged.output
    assert json.loads((await ota(env, "groups", "show", "pilot 2020+", "--json")).output)["vehicle_count"] == 0

    listed = await ota(env, "groups", "list", "--json")
    assert [(g["name"], g["vehicle_count"]) for g in json.loads(listed.output)] == [("Old", 2), ("Pilot 2020+", 0)]
    assert "Pilot 2020+" in (await ota(env, "groups", "list")).output
    removed = await ota(env, "groups", "remove", "pilot 2020+")
    assert removed.exit_code == 0 and "removed group" in removed.output
    missing = await ota(env, "groups", "show", "pilot 2020+")
    assert missing.exit_code == 1 and "404" in missing.output


@pytest.mark.parametrize("in_sql", [1000, 0], ids=["versions-in-sql", "versions-row-by-row"])
async def test_version_bounds_follow_pep_440_whichever_way_they_are_judged(
    env: Env, monkeypatch: pytest.MonkeyPatch, in_sql: int
) -> None:
    monkeypatch.setattr(group_filter, "_VERSIONS_IN_SQL", in_sql)
    versions = ["1.9", "1.10", "2.0", "banana"]
    cars = [vin(n) for n in range(1, 5)]
    await _fleet(env, *(vehicle(v, installed_version=ver) for v, ver in zip(cars, versions, strict=True)))
    group = await _group(env, "Up to 1.10", installed_versions={"min": "1.9", "max": "1.10"})
    assert group["vehicle_count"] == 2  # "1.10" sorts before "1.9" as text, not as a version
    assert await _vins(env, "/api/v1/groups/up%20to%201.10/vehicles") == cars[:2]
    other_hw = await _group(env, "Other hardware", installed_versions={"max": "9", "hardware_id": "ecu-other"})
    assert other_hw["vehicle_count"] == 0


async def test_a_vin_range_is_in_vin_order_the_check_digit_ignored(either_env: Env) -> None:
    """Position 9 (the check digit) differs from car to car: text order would let serials 207-212 in."""
    env = either_env
    await _fleet(env, *(vehicle(vin(n)) for n in range(200, 214)))
    group = await _group(env, "vr", vin_range={"first": vin(201), "last": vin(204)})
    assert group["vehicle_count"] == 4
    assert await _vins(env, f"/api/v1/groups/{group['id']}/vehicles") == sorted(vin(n) for n in range(201, 205))
    # in text order vin(206) (check digit 1) sorts before vin(204) (8); in VIN order it comes after
    backwards = await env.client.post(
        "/api/v1/groups", json={"name": "back", "filter": {"vin_range": {"first": vin(206), "last": vin(204)}}}
    )
    assert backwards.status_code == 422, backwards.text
    assert f"first {vin(206)} sorts after last {vin(204)} in VIN order" in backwards.json()["detail"]


async def test_a_groups_cars_as_csv_are_every_member_in_a_safe_file_name(env: Env) -> None:
    await _fleet(env, *(vehicle(vin(n)) for n in range(1, 4)))
    group = await _group(env, 'Say "hi"', models=["Sedan"])
    resp = await env.client.get(f"/api/v1/groups/{group['id']}/vehicles", params={"format": "csv", "limit": 1})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-disposition"] == f'attachment; filename="group-{group["id"]}-vehicles.csv"'
    by_name = await env.client.get("/api/v1/groups/say%20%22hi%22/vehicles", params={"format": "csv"})
    assert by_name.headers["content-disposition"] == 'attachment; filename="group-say__hi_-vehicles.csv"'
    lines = resp.text.splitlines()
    assert lines[0].startswith("vin,") and sorted(line.split(",")[0] for line in lines[1:]) == sorted(
        vin(n) for n in range(1, 4)
    )
