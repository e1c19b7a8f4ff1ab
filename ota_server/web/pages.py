"""The dashboard's pages: static HTML shells the page script fills from the JSON APIs.

Operators' pages (``/ui/...``) need the login cookie and send the browser to
``/ui/login`` without a valid one; the owner's look-up (``/lookup``) is public.
Nothing is rendered from data on the server, so the pages carry a strict
Content-Security-Policy (scripts and styles from this origin only, no inline code).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from firmware_bundles.errors import InvalidVin
from firmware_bundles.vin import normalize_vin, validate_vin
from ota_server.api.auth import READ_ONLY_METHODS, SESSION_COOKIE, csrf_key, csrf_token
from ota_server.api.deps import RuntimeDep
from ota_server.roles import APPROVE, OPERATE, READ, Actor
from ota_server.services import tokens
from ota_server.web import i18n
from ota_server.web import lookup as lookups
from ota_server.web.api import get_lookup_limiter

router = APIRouter(include_in_schema=False)

COOKIE_MAX_AGE_S = 12 * 3600
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it Chromium sends "Origin: null" on the login form's POST.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_SAFE_NEXT = re.compile(r"^/ui(/[A-Za-z0-9/_\-.?=&%]*)?$")


@cache
def _page(name: str) -> str:
    return resources.files("ota_server.web").joinpath("pages", name).read_text(encoding="utf-8")


def _html(name: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(_page(name), status_code=status_code, headers=SECURITY_HEADERS)


def _actor(request: Request, runtime: RuntimeDep) -> Actor | None:
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret or request.method not in READ_ONLY_METHODS:
        return None
    with runtime.sessions() as session:
        actor = tokens.authenticate(session, secret)
    return actor if actor is not None and actor.role in READ else None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=303)


def _operator_page(request: Request, runtime: RuntimeDep, name: str) -> Response:
    if _actor(request, runtime) is None:
        return _to_login(request)
    return _html(name)


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
def campaigns_page(request: Request, runtime: RuntimeDep) -> Response:
    return _operator_page(request, runtime, "campaigns.html")


@router.get("/ui/campaigns/{campaign_id}")
def campaign_page(campaign_id: int, request: Request, runtime: RuntimeDep) -> Response:
    return _operator_page(request, runtime, "campaign.html")


@router.get("/ui/vehicles")
def vehicle_search(request: Request, runtime: RuntimeDep, vin: str | None = None) -> Response:
    """The customer-care search box submits here; a VIN goes to its page."""
    if vin and vin.strip():
        return RedirectResponse(f"/ui/vehicles/{quote(normalize_vin(vin)[:32], safe='')}", status_code=303)
    return _operator_page(request, runtime, "vehicle.html")


@router.get("/ui/vehicles/{vin}")
def vehicle_page(vin: str, request: Request, runtime: RuntimeDep) -> Response:
    return _operator_page(request, runtime, "vehicle.html")


def _valid_vin(raw: str) -> bool:
    try:
        validate_vin(raw)
    except InvalidVin:
        return False
    return True


@router.get("/lookup")
def lookup_page(
    request: Request,
    runtime: RuntimeDep,
    vin: Annotated[str | None, Query(max_length=64)] = None,
    lang: Annotated[str | None, Query(max_length=8)] = None,
) -> Response:
    """The owner's recall check (no token), like a regulator's recall site, in English or Italian."""
    chosen = i18n.choose(request.headers.get("accept-language"), lang)
    keep_lang = bool(lang) and chosen == (lang or "").strip().lower()[:2]
    if vin and _valid_vin(vin) and normalize_vin(vin) != vin:  # the address shows the VIN as it is written
        query = f"vin={normalize_vin(vin)}" + (f"&lang={chosen}" if keep_lang else "")
        return RedirectResponse(f"/lookup?{query}", status_code=303, headers=SECURITY_HEADERS)
    client = request.client.host if request.client else None
    limiter = get_lookup_limiter(request)
    body, status_code = lookups.answer_page(runtime, limiter, client, vin, chosen, keep_lang)
    headers = {**SECURITY_HEADERS, "Content-Language": chosen, "Vary": "Accept-Language"}
    return HTMLResponse(body, status_code=status_code, headers=headers)


@router.get("/ui/session")
def ui_session(request: Request, runtime: RuntimeDep) -> Response:
    """The signed-in person, what they may do, and the CSRF token their page sends with each write.

    Readable only with the session's own cookie (SameSite=Strict, and the JSON is not readable
    cross-origin), so another site can never learn it.
    """
    actor = _actor(request, runtime)
    if actor is None:
        return JSONResponse({"detail": "not signed in"}, status_code=401, headers={"Cache-Control": "no-store"})
    secret = request.cookies[SESSION_COOKIE]
    body = {
        "name": actor.name,
        "role": actor.role.value,
        "may_operate": actor.role in OPERATE,
        "may_approve": actor.role in APPROVE,
        "csrf_token": csrf_token(csrf_key(request, runtime), secret),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/ui/login")
def login_page() -> Response:
    return _html("login.html")


def _safe_next(target: str | None) -> str:
    """Only a page of this dashboard: never another site (no open redirect)."""
    if target and _SAFE_NEXT.match(target) and "//" not in target and "\\" not in target:
        return target
    return "/ui/"


def _cookie_secure(request: Request, runtime: RuntimeDep) -> bool:
    public_url = runtime.settings.public_url or ""
    return request.url.scheme == "https" or public_url.startswith("https://")


def _same_origin(request: Request) -> bool:
    """A form post from another site carries its Origin; refuse it (no login CSRF)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site form
    return origin != "null" and origin.split("://", 1)[-1] == request.headers.get("host", "")


@router.post("/ui/login")
def login(
    request: Request,
    runtime: RuntimeDep,
    token: Annotated[str, Form(max_length=200)],
    next: Annotated[str | None, Form(max_length=500)] = None,
) -> Response:
    """Check the pasted API token and keep it in an HttpOnly, SameSite=Strict cookie for the pages."""
    get_lookup_limiter(request).take(request.client.host if request.client else None)
    if not _same_origin(request):
        return PlainTextResponse("sign-in from another site refused", status_code=403, headers=SECURITY_HEADERS)
    with runtime.sessions() as session:
        actor = tokens.authenticate(session, token.strip())
    if actor is None or actor.role not in READ:
        target = _safe_next(next)
        return RedirectResponse(f"/ui/login?error=1&next={quote(target, safe='')}", status_code=303)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token.strip(),
        max_age=COOKIE_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request, runtime),
    )
    return response


@router.post("/ui/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
