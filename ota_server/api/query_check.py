"""An unknown query parameter on an ``/api/v1`` JSON route is a 422, never silently ignored.

``GET /api/v1/vehicles?group=batch-a`` must not answer the whole fleet: the request names the
parameter it gave and the ones the route takes. Checked once, in :func:`ota_server.api.auth.authenticate`
(after the token, so a stranger still gets 401; before the route runs). Routes that take what
others send left alone: the public look-up (``/api/v1/public/``, linked from anywhere), the
dashboard's event stream (not a JSON route, out of the schema), ``/repo`` and the pages.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
from fastapi.dependencies.models import Dependant

API_PREFIX = "/api/v1/"
OPEN_PREFIXES = ("/api/v1/public/",)


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def declared_query(dependant: Dependant) -> frozenset[str]:
    """The query parameter names a route (and what it depends on) declares."""
    return frozenset(field.alias for d in _dependants(dependant) for field in d.query_params)


def refusal(request: Request) -> str | None:
    """The 422 sentence for query parameters the route does not take, or None."""
    path = request.url.path
    route = request.scope.get("route")
    dependant: Dependant | None = getattr(route, "dependant", None)
    if dependant is None or not path.startswith(API_PREFIX) or path.startswith(OPEN_PREFIXES):
        return None
    if not getattr(route, "include_in_schema", True):
        return None
    allowed = declared_query(dependant)
    unknown = sorted(set(request.query_params) - allowed)
    if not unknown:
        return None
    takes = ", ".join(sorted(allowed)) if allowed else "none"
    names = ", ".join(repr(n) for n in unknown)
    return f"unknown query parameter{'s' if len(unknown) > 1 else ''} {names}: this route takes {takes}"
