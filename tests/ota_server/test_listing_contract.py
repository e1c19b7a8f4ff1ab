"""Every list in the OpenAPI document keeps the one list contract: limit, cursor, sort, and the same 422s."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

from tests.ota_server.conftest import Env
from tests.ota_server.helpers import launched, recall_body, upload, vehicle, vin
from tests.ota_server.test_cli_ops import ota, wired  # noqa: F401  (the fixture)
from tests.ota_server.test_listing import walk

BAD_SORT = "'zz' is not a sort key here; use one of"
BAD_CURSOR = "cursor: not a cursor of this list (pass next_cursor back as it came)"


def _schema(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def list_operations(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every GET whose 200 answer (JSON) is a page: an object with ``items`` and ``next_cursor``."""
    found = []
    for path, operations in spec["paths"].items():
        operation = operations.get("get")
        if operation is None:
            continue
        content = operation["responses"].get("200", {}).get("content", {}).get("application/json", {})
        body = _schema(spec, content.get("schema", {}))
        shapes = [_schema(spec, s) for s in body.get("anyOf", [])] or [body]
        if any({"items", "next_cursor"} <= set(s.get("properties", {})) for s in shapes):
            found.append((path, operation))
    return found


async def _seeded(env: Env) -> dict[str, str]:
    """One of each object a list's path names: a launched campaign (and its recall), a group, a webhook."""
    campaign = await launched(env.client, [vin(1), vin(2)])
    group = await env.client.post("/api/v1/groups", json={"name": "all", "filter": {}})
    assert group.status_code == 201, group.text
    hook = await env.client.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/ota"})
    assert hook.status_code == 201, hook.text
    return {
        "campaign_id": str(campaign["id"]),
        "recall_id": str(campaign["recall_id"]),
        "group": str(group.json()["id"]),
        "webhook_id": str(hook.json()["id"]),
    }


async def test_every_list_declares_limit_cursor_sort_and_refuses_bad_ones_alike(env: Env) -> None:
    ids = await _seeded(env)
    operations = list_operations(env.app.openapi())
    assert len(operations) >= 10, [p for p, _ in operations]
    for path, operation in operations:
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        assert {"limit", "cursor", "sort"} <= declared, (path, sorted(declared))
        limit = next(p["schema"] for p in operation["parameters"] if p["name"] == "limit")
        assert (limit.get("minimum"), limit.get("maximum")) == (1, 1000), (path, limit)
        names = re.findall(r"{(\w+)}", path)
        assert set(names) <= set(ids), f"{path}: give the test an object for {names}"
        url = re.sub(r"{(\w+)}", lambda m: ids[m.group(1)], path)
        assert (await env.client.get(url)).status_code == 200, url
        assert (await env.client.get(url, params={"limit": 1000})).status_code == 200, url
        bad_sort = await env.client.get(url, params={"sort": "zz"})
        assert bad_sort.status_code == 422 and BAD_SORT in bad_sort.json()["detail"], (url, bad_sort.text)
        bad_cursor = await env.client.get(url, params={"cursor": "garbage"})
        assert bad_cursor.status_code == 422 and bad_cursor.json()["detail"] == BAD_CURSOR, (url, bad_cursor.text)
        assert "text/csv" in operation["responses"]["200"]["content"], path
        rows = await env.client.get(url, params={"format": "csv", "limit": 1})
        assert rows.status_code == 200 and rows.headers["content-type"].startswith("text/csv"), (url, rows.text)
        every = await _every(env, url)
        header, *table = list(csv.reader(io.StringIO(rows.text)))
        assert len(table) == len(every), (url, rows.text)  # every row, not one page
        assert not every or set(every[0]) == set(header), (url, header)
        bad_csv_sort = await env.client.get(url, params={"format": "csv", "sort": "zz"})
        assert bad_csv_sort.status_code == 422 and BAD_SORT in bad_csv_sort.json()["detail"], (url, bad_csv_sort.text)


async def _every(env: Env, url: str) -> list[dict[str, Any]]:
    """Every item of a list, following next_cursor."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        resp = await env.client.get(url, params={"limit": 1, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        found += resp.json()["items"]
        cursor = resp.json()["next_cursor"]
        if cursor is None:
            return found


async def test_the_fleet_and_a_groups_cars_page_in_the_asked_order(env: Env) -> None:
    cars = [vehicle(vin(n), model=m) for n, m in enumerate(["Delta", "Alpha", "Gamma", "Beta", "Alpha"], start=1)]
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})).status_code == 201
    by_model = await walk(env, "/api/v1/vehicles", 2, sort="-model")
    assert [(c["model"], c["vin"]) for c in by_model] == sorted(((c["model"], c["vin"]) for c in cars), reverse=True)
    # a recall not launched yet: its population is judged in Python, and the pages still follow the sort
    release = (await upload(env.client)).json()["id"]
    recall = await env.client.post("/api/v1/recalls", json=recall_body(release, models=["Alpha", "Beta"]))
    assert recall.status_code == 201, recall.text
    chosen = await walk(env, "/api/v1/vehicles", 1, recall=str(recall.json()["id"]), sort="-vin")
    assert [c["vin"] for c in chosen] == sorted([vin(2), vin(4), vin(5)], reverse=True)
    group = await env.client.post("/api/v1/groups", json={"name": "a-and-g", "filter": {"models": ["Alpha", "Gamma"]}})
    assert group.status_code == 201, group.text
    members = await walk(env, f"/api/v1/groups/{group.json()['id']}/vehicles", 1, sort="model")
    assert [c["vin"] for c in members] == [*sorted([vin(2), vin(5)]), vin(3)]


async def test_webhooks_page_in_the_asked_order(env: Env) -> None:
    for n in range(3):
        resp = await env.client.post("/api/v1/webhooks", json={"url": f"https://hooks{n}.example.com/"})
        assert resp.status_code == 201, resp.text
    newest = await walk(env, "/api/v1/webhooks", 1, sort="-id")
    assert [h["url"] for h in newest] == [f"https://hooks{n}.example.com/" for n in (2, 1, 0)]
    deliveries = await walk(env, f"/api/v1/webhooks/{newest[0]['id']}/deliveries", 1, sort="attempts")
    assert deliveries == []


async def test_cli_lists_sort_as_asked(wired: Env) -> None:  # noqa: F811
    cars = [vehicle(vin(n), model=m) for n, m in enumerate(["Delta", "Alpha", "Gamma"], start=1)]
    assert (await wired.client.post("/api/v1/vehicles/batch", json={"vehicles": cars})).status_code == 201
    listed = await ota(wired, "vehicles", "list", "--sort", "-model", "--json")
    assert listed.exit_code == 0, listed.output
    assert [c["model"] for c in json.loads(listed.stdout)] == ["Gamma", "Delta", "Alpha"]
    for n in range(2):
        assert (await wired.client.post("/api/v1/webhooks", json={"url": f"https://h{n}.example.com/"})).is_success
    hooks = await ota(wired, "webhooks", "list", "--sort", "-id", "--json")
    assert hooks.exit_code == 0, hooks.output
    assert [h["url"] for h in json.loads(hooks.stdout)] == ["https://h1.example.com/", "https://h0.example.com/"]
    bad = await ota(wired, "webhooks", "list", "--sort", "zz")
    assert bad.exit_code != 0 and "not a sort key" in bad.output


async def test_an_unknown_query_parameter_is_a_422_naming_it_on_every_api_route(env: Env) -> None:
    """Ignored, ``?group=batch-a`` would answer the whole fleet: every /api/v1 route with a token refuses it."""
    await env.client.post("/api/v1/vehicles", json=vehicle(vin(1)))
    fleet = await env.client.get("/api/v1/vehicles", params={"group": "batch-a"})
    assert fleet.status_code == 422, fleet.text
    assert fleet.json()["detail"].startswith("unknown query parameter 'group': this route takes campaign, cursor"), (
        fleet.text
    )
    assert "tag" in fleet.json()["detail"]
    spec = env.app.openapi()
    checked = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/public/"):
            continue
        url = re.sub(r"{(\w+)}", lambda m: {"vin": vin(1), "kind": "population"}.get(m.group(1), "1"), path)
        for method, operation in operations.items():
            if "401" not in operation["responses"]:
                continue  # no token: the car's own certificate renewal (checked by its signature)
            resp = await env.client.request(method, url, params={"zz_unknown": "1"})
            assert resp.status_code == 422 and "'zz_unknown'" in resp.json()["detail"], (method, url, resp.text)
            checked += 1
    assert checked >= 60, checked
    # the token first: a stranger learns nothing more than 401
    stranger = await env.client.get(
        "/api/v1/vehicles", params={"zz_unknown": "1"}, headers={"Authorization": "Bearer x"}
    )
    assert stranger.status_code == 401, stranger.text
    # routes that take what others send are left alone
    assert (await env.client.get(f"/api/v1/public/recalls?vin={vin(1)}&utm_source=letter")).status_code == 200
