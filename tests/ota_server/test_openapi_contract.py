"""The OpenAPI schema says what the API does: error bodies, codes, patterns, bounds and links.

Fast checks on the document itself and on a few real answers; the schemathesis runs against
``ota serve`` (tests/ota_server/test_schemathesis_serve.py) check the rest case by case.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from firmware_bundles.vin import make_vin
from ota_server.http.app import create_app
from ota_server.mqtt.publisher import FakePublisher
from tests.ota_server.conftest import Env, make_settings
from tests.ota_server.helpers import recall_body, upload, vehicle

ERROR_BODY = "#/components/schemas/ErrorBody"


@pytest.fixture
def schema(tmp_path: Path) -> dict[str, Any]:
    app: FastAPI = create_app(make_settings(tmp_path), publisher=FakePublisher())
    document: dict[str, Any] = app.openapi()
    return document


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: dict[str, Any] = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_every_error_answer_is_documented_with_the_one_error_body(schema: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for method, path, op in operations(schema):
        for code, response in op["responses"].items():
            if code.startswith(("4", "5")) and path != "/readyz":
                body = response["content"]["application/json"]["schema"]
                assert body == {"$ref": ERROR_BODY}, f"{method} {path} {code}"
    detail = schema["components"]["schemas"]["ErrorBody"]["properties"]["detail"]
    assert detail["type"] == "string"


def test_codes_are_derived_from_what_a_route_depends_on(schema: dict[str, Any]) -> None:
    for method, path, op in operations(schema):
        codes = set(op["responses"])
        if op.get("security"):
            assert {"401", "403", "429"} <= codes or path == "/api/v1/whoami", f"{method} {path}"
            assert "401" in codes and "429" in codes
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
        if "{" in path:
            assert "404" in codes, f"{method} {path}"
        if "requestBody" in op:
            assert {"400", "413", "422"} <= codes, f"{method} {path}"
    assert "409" in schema["paths"]["/api/v1/recalls"]["post"]["responses"]
    assert "409" in schema["paths"]["/api/v1/campaigns/{campaign_id}/pause"]["post"]["responses"]


def test_links_lead_from_creates_to_existing_operations_and_parameters(schema: dict[str, Any]) -> None:
    seen = 0
    for method, path, op in operations(schema):
        for code, response in op["responses"].items():
            for name, link in response.get("links", {}).items():
                seen += 1
                ref = link["operationRef"].removeprefix("#/paths/")
                target_path, target_method = ref.rsplit("/", 1)
                target_path = target_path.replace("~1", "/").replace("~0", "~")
                target = schema["paths"][target_path][target_method]
                names = {p["name"] for p in target.get("parameters", [])}
                assert set(link["parameters"]) <= names, f"{method} {path} {code} {name}"
    assert seen >= 25
    created = schema["paths"]["/api/v1/recalls"]["post"]["responses"]["201"]["links"]
    assert created["LaunchRecall"]["parameters"] == {"recall_id": "$response.body#/id"}


def _pattern(schema: dict[str, Any], node: dict[str, Any]) -> str:
    node = resolve(schema, node)
    pattern: str = node["pattern"]
    return pattern


def test_vin_rules_are_in_the_schema(schema: dict[str, Any]) -> None:
    vehicle_vin = schema["components"]["schemas"]["VehicleCreate"]["properties"]["vin"]
    pattern = _pattern(schema, vehicle_vin)
    assert vehicle_vin["format"] == "vin"
    assert re.fullmatch(pattern, make_vin("1HG", "CM826", "3", "A", 4352))
    assert re.fullmatch(pattern, f" {make_vin('1HG', 'CM826', '3', 'A', 4352).lower()}\t")  # normalized, not refused
    for bad in ("1HGCM82633A00435", "1HGCM82633A0O4352", "1HGCM82633A0043521", "\uff11HGCM82633A004352"):
        assert not re.fullmatch(pattern, bad), bad
    paths = schema["paths"]
    for path in ("/api/v1/vehicles/{vin}", "/api/v1/vehicles/{vin}/status", "/api/v1/vehicles/{vin}/timeline"):
        (param,) = paths[path]["get"]["parameters"]
        assert param["schema"]["pattern"] == pattern, path
    provision = schema["components"]["schemas"]["ProvisionBatch"]["properties"]["vins"]["items"]
    assert provision["pattern"] == pattern


def test_campaign_number_rule_is_in_the_schema(schema: dict[str, Any]) -> None:
    field = schema["components"]["schemas"]["RecallCreate"]["properties"]["campaign_number"]
    assert re.fullmatch(field["pattern"], "24V-123")
    assert re.fullmatch(field["pattern"], "24v-123456")
    for bad in ("24V-12", "24V-1234567", "\uff12\uff14V-123", "24V123", "V24-123"):
        assert not re.fullmatch(field["pattern"], bad), bad


async def test_422_answers_match_their_documented_body(env: Env, schema: dict[str, Any]) -> None:
    error_body = resolve(schema, {"$ref": ERROR_BODY})
    assert error_body["required"] == ["detail"]
    for resp in (
        await env.client.get("/api/v1/recalls/not-a-number"),
        await env.client.post("/api/v1/vehicles", json={"vin": 3}),
    ):
        assert resp.status_code == 422
        assert set(resp.json()) == {"detail"}
        assert isinstance(resp.json()["detail"], str)


async def test_a_campaign_number_with_non_ascii_digits_is_refused(env: Env) -> None:
    """The service matched ``\\d``, which takes any Unicode digit: fullwidth '24V-123' was stored as a recall."""
    await env.client.post("/api/v1/vehicles", json=vehicle(make_vin("1HG", "CM826", "3", "A", 1)))
    release = (await upload(env.client)).json()
    resp = await env.client.post("/api/v1/recalls", json=recall_body(release["id"], number="\uff12\uff14V-123"))
    assert resp.status_code == 422, resp.text
    assert (await env.client.get("/api/v1/recalls")).json()["items"] == []


async def test_a_body_that_is_not_json_is_a_documented_400(env: Env) -> None:
    resp = await env.client.post("/api/v1/tokens", content=b"{\xff", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert isinstance(resp.json()["detail"], str)


async def test_405_names_every_method_the_path_allows(env: Env) -> None:
    """Starlette's 405 named only the first route's methods: OPTIONS /api/v1/recalls said ``Allow: POST``."""
    resp = await env.client.request("OPTIONS", "/api/v1/recalls")
    assert resp.status_code == 405
    assert set(resp.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert isinstance(resp.json()["detail"], str)
    resp = await env.client.request("PUT", "/api/v1/campaigns/1/pause")
    assert resp.headers["Allow"] == "POST"
    resp = await env.client.request("OPTIONS", "/api/v1/vehicles/batch")  # not GET /vehicles/{vin}
    assert resp.headers["Allow"] == "POST"
