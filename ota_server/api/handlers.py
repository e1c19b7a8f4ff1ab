"""The single mapping from ``ota_server.errors`` to HTTP, with ``{"detail": "..."}`` bodies."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

from ota_server.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    NotReady,
    OtaError,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)

# Most specific first: TooLarge is an InvalidInput.
STATUS_BY_ERROR: tuple[tuple[type[OtaError], int], ...] = (
    (Unauthorized, 401),
    (Forbidden, 403),
    (RateLimited, 429),
    (NotFound, 404),
    (Conflict, 409),
    (TooLarge, 413),
    (InvalidInput, 422),
    (NotReady, 503),
)


def status_for(error: OtaError) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


async def _ota_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OtaError)
    return JSONResponse({"detail": exc.message}, status_code=status_for(exc), headers=headers_for(exc))


def headers_for(error: OtaError) -> dict[str, str] | None:
    """The headers an error's answer carries (also used by the /repo layer outside the API stack)."""
    if isinstance(error, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(error, RateLimited | Unavailable):
        return {"Retry-After": str(max(1, math.ceil(error.retry_after)))}
    return None


def _where(loc: tuple[object, ...]) -> str:
    """``vehicles[3].vin``: the field's path as the services name it (list indexes in brackets)."""
    where = ""
    for part in loc:
        if part in ("body", "query", "path", "form"):
            continue
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where


def _message(err: dict[str, object]) -> str:
    """Pydantic's message; our own validators' words without its "Value error, " prefix.

    A length limit on a text that has its own validator (``Text``) is checked by pydantic's generic
    length rule, which counts "items": for a string it says characters, as for a plain ``str``.
    """
    ctx = err.get("ctx")
    if err["type"] in ("too_long", "too_short") and isinstance(err.get("input"), str) and isinstance(ctx, dict):
        if err["type"] == "too_long":
            return f"String should have at most {ctx['max_length']} characters"
        return f"String should have at least {ctx['min_length']} characters"
    return str(err["msg"]).removeprefix("Value error, ")


def validation_detail(exc: RequestValidationError) -> str:
    """Pydantic's error list, flattened to one readable sentence per problem (never the input itself):
    the 422's ``detail``, and what the audit log keeps of it."""
    return "; ".join(f"{_where(tuple(err['loc'])) or 'request'}: {_message(err)}" for err in exc.errors()[:10])


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": validation_detail(exc)}, status_code=422)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the routes that name ``path`` most exactly serve.

    Starlette's 405 names only the first matching route's methods. Of all routes matching,
    those with the fewest path parameters count: ``/vehicles/batch`` is the batch route's path,
    not a VIN for ``/vehicles/{vin}``.
    """
    by_params: dict[int, set[str]] = {}
    for route in iter_route_contexts(app.routes):
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(path) and route.methods:
            by_params.setdefault(len(route.param_convertors), set()).update(route.methods)
    return sorted(by_params[min(by_params)]) if by_params else []


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request.app, request.scope["path"]))
        exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}), "Allow": allow})
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(OtaError, _ota_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
