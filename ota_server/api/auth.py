"""Who is calling: bearer tokens, role checks, rate limits and the audit trail of writes.

Read routes depend on :func:`require` (``Viewer``...); write routes take their session
from :func:`audited` (``OperatorSession``...), which writes the action's audit entry in
the same transaction as the action, and records refusals (403, 409, 422...) too.

Browsers (the dashboard in ``ota_server.web``) cannot send a bearer header on navigation
or from ``EventSource``, so the token may also come in the HttpOnly, SameSite=Strict
cookie :data:`SESSION_COOKIE`. On reads (GET/HEAD) the cookie is enough. A write with
the cookie (an operator's button on a page) also needs the :data:`CSRF_HEADER` header,
an HMAC of the cookie's token under the server's CSRF key that only the session's own
pages can read (``GET /ui/session``), and must come from this origin (``Origin`` /
``Sec-Fetch-Site``); otherwise it is refused with 403 and the refusal is audited.
A bearer header needs neither (no browser sends one on its own).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from ota_server.api import query_check
from ota_server.api.deps import RuntimeDep
from ota_server.api.handlers import status_for, validation_detail
from ota_server.errors import Forbidden, InvalidInput, OtaError, Unauthorized
from ota_server.infra import secret_file
from ota_server.infra.ratelimit import TokenBuckets
from ota_server.roles import ADMINISTER, APPROVE, OPERATE, READ, Actor, Role, describe
from ota_server.runtime import Runtime
from ota_server.services import audit, tokens
from ota_server.services.audit import Action, Trail

bearer = HTTPBearer(auto_error=False, description="An API token (`ota tokens create`): `Authorization: Bearer <token>`")

# The dashboard's login cookie (set by ``POST /ui/login``): a write with it needs CSRF_HEADER too.
SESSION_COOKIE = "ota_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_KEY_FILE = "csrf.key"
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


def get_limiter(request: Request) -> TokenBuckets:
    limiter: TokenBuckets = request.app.state.rate_limiter
    return limiter


def presented_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The bearer token, else the login cookie (a write with it is checked by :func:`cookie_write_refusal`)."""
    if credentials is not None:
        return credentials.credentials
    return request.cookies.get(SESSION_COOKIE) or None


def csrf_token(key: bytes, secret: str) -> str:
    """The CSRF token of the session whose cookie holds ``secret``: useless for any other session."""
    return hmac.new(key, b"ota-csrf\0" + secret.encode(), hashlib.sha256).hexdigest()


def csrf_key(request: Request, runtime: Runtime) -> bytes:
    """The server's CSRF key (``<data dir>/csrf.key``, made on first use), read once per app."""
    key: bytes | None = getattr(request.app.state, "csrf_key", None)
    if key is None:
        key = request.app.state.csrf_key = secret_file.load_or_create(runtime.settings.data_dir / CSRF_KEY_FILE)
    return key


def _same_site_hosts(request: Request, runtime: Runtime) -> set[str]:
    hosts = {request.headers.get("host", "")}
    if runtime.settings.public_url:
        hosts.add(runtime.settings.public_url.split("://", 1)[-1].split("/", 1)[0])
    return hosts


def _origin_refusal(request: Request, runtime: Runtime) -> str | None:
    """None when the request comes from this site's own pages (the browser says so), else why not."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site != "same-origin":
        return f"a write with the login cookie from another site (Sec-Fetch-Site: {site[:40]}) is refused"
    origin = request.headers.get("origin")
    if origin is None:
        if site is None:
            return "a write with the login cookie must come from the dashboard's pages (no Origin header)"
        return None
    if origin == "null" or origin.split("://", 1)[-1] not in _same_site_hosts(request, runtime):
        return f"a write with the login cookie from another site (Origin: {origin[:100]}) is refused"
    return None


def cookie_write_refusal(request: Request, runtime: Runtime, secret: str) -> str | None:
    """Why a write carrying the login cookie (and no bearer header) is refused; None if it may go on."""
    presented = request.headers.get(CSRF_HEADER)
    if not presented:
        return (
            f"a write with the login cookie needs the {CSRF_HEADER} header (the page reads it from GET /ui/session); "
            "API clients send 'Authorization: Bearer <token>'"
        )
    if not hmac.compare_digest(presented.encode(), csrf_token(csrf_key(request, runtime), secret).encode()):
        return f"the {CSRF_HEADER} header does not belong to this sign-in session: reload the page"
    return _origin_refusal(request, runtime)


def _route_action(request: Request, actor: Actor) -> Action:
    route = getattr(request.scope.get("route"), "path", request.url.path)
    return Action(
        actor=actor.name,
        role=actor.role.value,
        method=request.method,
        route=route,
        target={k: str(v) for k, v in request.path_params.items()},
        status=getattr(request.scope.get("route"), "status_code", None) or 200,
    )


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    runtime: RuntimeDep,
    limiter: Annotated[TokenBuckets, Depends(get_limiter)],
) -> Actor:
    secret = presented_token(request, credentials)
    if secret is None:
        raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
    with runtime.sessions() as session:
        actor = tokens.authenticate(session, secret)
        if actor is None:
            raise Unauthorized("unknown or revoked API token")
        limiter.take(actor.token_id)
        refusal = None
        if credentials is None and request.method not in READ_ONLY_METHODS:
            refusal = cookie_write_refusal(request, runtime, secret)
        if refusal is not None:
            action = _route_action(request, actor)
            action.status, action.detail = 403, refusal
            audit.record(session, action, runtime.clock())
            raise Forbidden(refusal)
        unknown = query_check.refusal(request)  # after the token: a stranger learns nothing but 401
        if unknown is not None:
            if request.method not in READ_ONLY_METHODS:  # a refused write is audited, as every other
                action = _route_action(request, actor)
                action.status, action.detail = 422, unknown
                audit.record(session, action, runtime.clock())
            raise InvalidInput(unknown)
    return actor


def _refusal(allowed: frozenset[Role], actor: Actor) -> Forbidden:
    return Forbidden(f"{actor.name} has the {actor.role} role; this needs {describe(allowed)}")


def require(allowed: frozenset[Role]) -> Callable[[Actor], Actor]:
    def check(actor: Annotated[Actor, Depends(authenticate)]) -> Actor:
        if actor.role not in allowed:
            raise _refusal(allowed, actor)
        return actor

    return check


_TRAIL = audit.TRAIL_KEY
_ACTOR = "ota_actor"

Viewer = Annotated[Actor, Depends(require(READ))]
Operator = Annotated[Actor, Depends(require(OPERATE))]
Admin = Annotated[Actor, Depends(require(ADMINISTER))]


def _status(exc: Exception) -> int:
    if isinstance(exc, OtaError):
        return status_for(exc)
    if isinstance(exc, RequestValidationError):
        return 422
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


def _detail(exc: Exception) -> str:
    if isinstance(exc, OtaError):
        return exc.message
    if isinstance(exc, RequestValidationError):
        return validation_detail(exc)
    return f"{type(exc).__name__}: {exc}"[:500]


def audited(allowed: frozenset[Role]) -> Callable[..., Iterator[Session]]:
    """A session for a write route open to ``allowed`` roles; every outcome is audited.

    The action's entry is committed with the route's first commit; a refusal or failure
    is recorded on its own. Routes reach the :class:`Trail` with :func:`trail_of`.
    """

    def dependency(
        request: Request, actor: Annotated[Actor, Depends(authenticate)], runtime: RuntimeDep
    ) -> Iterator[Session]:
        action = _route_action(request, actor)
        with runtime.sessions() as session:
            trail = audit.record_commits(session, action, runtime.clock)
            session.info[_TRAIL] = trail
            session.info[_ACTOR] = actor
            if actor.role not in allowed:
                refusal = _refusal(allowed, actor)
                trail.fail(403, refusal.message)
                raise refusal
            try:
                yield session
            except Exception as exc:
                trail.fail(_status(exc), _detail(exc))
                raise
            trail.finish()

    return dependency


def trail_of(session: Session) -> Trail:
    trail: Trail = session.info[_TRAIL]
    return trail


def actor_of(session: Session) -> Actor:
    actor: Actor = session.info[_ACTOR]
    return actor


OperatorSession = Annotated[Session, Depends(audited(OPERATE))]
ApproverSession = Annotated[Session, Depends(audited(APPROVE))]
AdminSession = Annotated[Session, Depends(audited(ADMINISTER))]

# For ``dependencies=[...]`` on routes that do not need the actor itself.
needs_read = Depends(require(READ))
needs_operator = Depends(require(OPERATE))
needs_admin = Depends(require(ADMINISTER))
