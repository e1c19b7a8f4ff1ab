"""Who is calling: bearer tokens, role checks, rate limits and the audit trail of writes.

Read routes depend on :func:`require` (``Viewer``...); write routes take their session
from :func:`audited` (``OperatorSession``...), which writes the action's audit entry in
the same transaction as the action, and records refusals (403, 409, 422...) too.

Browsers (the dashboard in ``ota_server.web``) cannot send a bearer header on navigation
or from ``EventSource``, so the token may also come in the HttpOnly, SameSite=Strict
cookie :data:`SESSION_COOKIE`, and only on read-only (GET/HEAD) requests: a write
always needs the header, so a cross-site request can never act with the cookie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from ota_server.api.deps import RuntimeDep
from ota_server.api.handlers import status_for
from ota_server.errors import Forbidden, OtaError, Unauthorized
from ota_server.infra.ratelimit import TokenBuckets
from ota_server.roles import ADMINISTER, APPROVE, OPERATE, READ, Actor, Role, describe
from ota_server.services import audit, tokens
from ota_server.services.audit import Action, Trail

bearer = HTTPBearer(auto_error=False, description="An API token (`ota tokens create`): `Authorization: Bearer <token>`")

# The dashboard's login cookie (set by ``POST /ui/login``): honoured on GET and HEAD only.
SESSION_COOKIE = "ota_session"
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


def get_limiter(request: Request) -> TokenBuckets:
    limiter: TokenBuckets = request.app.state.rate_limiter
    return limiter


def presented_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The bearer token, or on a read-only request the login cookie; None if neither."""
    if credentials is not None:
        return credentials.credentials
    if request.method in READ_ONLY_METHODS:
        return request.cookies.get(SESSION_COOKIE) or None
    return None


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
    return f"{type(exc).__name__}: {exc}"[:500]


def audited(allowed: frozenset[Role]) -> Callable[..., Iterator[Session]]:
    """A session for a write route open to ``allowed`` roles; every outcome is audited.

    The action's entry is committed with the route's first commit; a refusal or failure
    is recorded on its own. Routes reach the :class:`Trail` with :func:`trail_of`.
    """

    def dependency(
        request: Request, actor: Annotated[Actor, Depends(authenticate)], runtime: RuntimeDep
    ) -> Iterator[Session]:
        route = getattr(request.scope.get("route"), "path", request.url.path)
        action = Action(
            actor=actor.name,
            role=actor.role.value,
            method=request.method,
            route=route,
            target={k: str(v) for k, v in request.path_params.items()},
            status=getattr(request.scope.get("route"), "status_code", None) or 200,
        )
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
