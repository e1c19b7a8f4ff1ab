"""The OpenAPI document, made to say what the API does: every error body, code and link.

FastAPI documents a 200 and a 422 whose body (a list of pydantic errors) is not what
``ota_server.api.handlers`` returns. Here, once for every route, the error answers are
derived from what the route depends on (a token: 401, 403 and 429; a path parameter: 404;
any parameter or body, or a token on /api/v1 (an unknown query parameter): 422; a body: 400
and 413) and all share one body, :class:`ErrorBody`.
Codes that only a route's own logic knows (409, 503) are listed on the route with
:func:`errors`. :data:`LINKS` ties each create operation to the operations that use what
it created, so a client (or the stateful phase of a fuzzer) can follow them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts

from ota_server.api import query_check
from ota_server.api.auth import audited, authenticate, require
from ota_server.schemas import ErrorBody

DESCRIPTIONS: dict[int, str] = {
    400: "The body is not well-formed JSON (or not a readable form)",
    401: "No API token, or one the server does not know or has revoked",
    403: "The token's role (or its person) may not do this",
    404: "What the path names does not exist",
    409: "The request clashes with what is stored (duplicate, already launched, wrong state)",
    413: "The request body is over the server's limit",
    422: "The input breaks a rule; the detail names each problem",
    429: "Too many requests; Retry-After says in how many seconds to try again",
    503: "A dependency (database, broker, signing keys) is not available; retry later (after Retry-After, when given)",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}},
    503: {
        "Retry-After": {
            "description": "Seconds to wait (database outages)",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# FastAPI's own 422 body, which this API never sends.
_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for error codes a route's own logic may answer (409, 503...)."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


# Closures made by one factory share its code object: this recognises any role check.
_ROLE_CHECKS = frozenset({require(frozenset()).__code__, audited(frozenset()).__code__})


def derived_codes(route: RouteContext) -> set[int]:
    """The error codes a route can answer because of what it depends on (its routers' included)."""
    calls = list(_calls(route.dependant))
    codes: set[int] = set()
    if authenticate in calls:
        codes |= {401, 429}
    if any(getattr(call, "__code__", None) in _ROLE_CHECKS for call in calls):
        codes.add(403)
    if route.dependant.path_params:
        codes.add(404)
    if route.body_field is not None:
        codes |= {400, 413}
    if any(_has_params(d) for d in (route.dependant, *_dependants(route.dependant))):
        codes.add(422)
    if authenticate in calls and (route.path_format or "").startswith(query_check.API_PREFIX):
        codes.add(422)  # an unknown query parameter (api/query_check.py)
    return codes


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    for sub in dependant.dependencies:
        yield sub
        yield from _dependants(sub)


def _has_params(dependant: Dependant) -> bool:
    return bool(dependant.path_params or dependant.query_params or dependant.body_params)


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: after ``source`` answers ``status``, ``target`` can use ``parameters``."""

    source: tuple[str, str]
    status: int
    name: str
    target: tuple[str, str]
    parameters: dict[str, str]


_RECALL = "/api/v1/recalls/{recall_id}"
_CAMPAIGN = "/api/v1/campaigns/{campaign_id}"
_VEHICLE = "/api/v1/vehicles/{vin}"
_BY_RECALL = {"recall_id": "$response.body#/id"}
_BY_CAMPAIGN = {"campaign_id": "$response.body#/id"}
_BY_VIN = {"vin": "$response.body#/vin"}
_RECALL_USES = {
    "GetRecall": ("get", _RECALL),
    "LaunchRecall": ("post", _RECALL + "/launch"),
    "ApproveLaunch": ("post", _RECALL + "/approve"),
    "Report": ("get", "/api/v1/reports/recalls/{recall_id}/{kind}"),
}
_CAMPAIGN_USES = {
    "GetCampaign": ("get", _CAMPAIGN),
    "GetProgress": ("get", _CAMPAIGN + "/progress"),
    "GetDashboard": ("get", _CAMPAIGN + "/dashboard"),
    "NoticeLog": ("get", _CAMPAIGN + "/notices"),
    "Pause": ("post", _CAMPAIGN + "/pause"),
    "Resume": ("post", _CAMPAIGN + "/resume"),
    "Cancel": ("post", _CAMPAIGN + "/cancel"),
    "RetryFailed": ("post", _CAMPAIGN + "/retry-failed"),
    "RecordOutcome": ("post", _CAMPAIGN + "/vehicles/{vin}/outcome"),
}
_VEHICLE_USES = {
    "GetVehicle": ("get", _VEHICLE),
    "GetStatus": ("get", _VEHICLE + "/status"),
    "GetAgentConfig": ("get", _VEHICLE + "/agent-config"),
    "GetTimeline": ("get", _VEHICLE + "/timeline"),
    "Provision": ("post", _VEHICLE + "/provision"),
    "PublicLookup": ("get", "/api/v1/public/recalls"),
}


def _fan_out(
    source: tuple[str, str], status: int, uses: dict[str, tuple[str, str]], parameters: dict[str, str]
) -> list[Link]:
    return [Link(source, status, name, target, parameters) for name, target in uses.items()]


LINKS: tuple[Link, ...] = (
    *_fan_out(("post", "/api/v1/recalls"), 201, _RECALL_USES, _BY_RECALL),
    *_fan_out(("post", _RECALL + "/launch"), 201, _CAMPAIGN_USES, _BY_CAMPAIGN),
    Link(
        ("post", _RECALL + "/launch"),
        202,
        "ApproveLaunch",
        ("post", _RECALL + "/approve"),
        {"recall_id": "$response.body#/recall_id"},
    ),
    *_fan_out(("post", _RECALL + "/approve"), 201, _CAMPAIGN_USES, _BY_CAMPAIGN),
    *_fan_out(("post", "/api/v1/vehicles"), 201, _VEHICLE_USES, _BY_VIN),
    Link(
        ("post", "/api/v1/tokens"),
        201,
        "RevokeToken",
        ("delete", "/api/v1/tokens/{token_id}"),
        {"token_id": "$response.body#/id"},
    ),
)


def _operation_ref(method: str, path: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _document_errors(schema: dict[str, Any], app: FastAPI) -> None:
    for route in iter_route_contexts(app.routes):
        if getattr(route, "dependant", None) is None or not route.include_in_schema:
            continue
        codes = derived_codes(route)
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for code in codes | {int(c) for c in responses if c.isdigit() and int(c) in DESCRIPTIONS}:
                _error_response(responses, code)


def _error_response(responses: dict[str, Any], code: int) -> None:
    entry = responses.setdefault(str(code), {})
    entry.setdefault("description", DESCRIPTIONS[code])
    if code == 422 and entry["description"] == "Validation Error":
        entry["description"] = DESCRIPTIONS[422]
    content = entry.setdefault("content", {}).setdefault("application/json", {})
    if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError") or "schema" not in content:
        content["schema"] = dict(_ERROR_REF)
    if code in _HEADERS:
        entry.setdefault("headers", {}).update(_HEADERS[code])


def _add_links(schema: dict[str, Any]) -> None:
    for link in LINKS:
        method, path = link.source
        response = schema["paths"][path][method]["responses"][str(link.status)]
        response.setdefault("links", {})[link.name] = {
            "operationRef": _operation_ref(*link.target),
            "parameters": dict(link.parameters),
        }


def install(app: FastAPI) -> None:
    """Replace ``app.openapi`` with FastAPI's document plus error bodies, codes and links."""
    generate = app.openapi
    documented: list[dict[str, Any]] = []  # the schema already completed (FastAPI regenerates on new routes)

    def openapi() -> dict[str, Any]:
        schema = generate()
        if not documented or documented[0] is not schema:
            _document_errors(schema, app)
            _add_links(schema)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in _UNUSED_SCHEMAS:
                components.pop(name, None)
            components["ErrorBody"] = ErrorBody.model_json_schema()
            documented[:] = [schema]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
