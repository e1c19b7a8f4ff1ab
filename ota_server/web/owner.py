"""The owner page (``/owner/<token>``): the notice, the exact signed update, and accept/decline.

Rendered on the server (every value HTML-escaped) so it works without script; the form
posts back to the same token with the images it showed and the page's nonce
(:mod:`ota_server.services.owner_links`). An answer is signed into the car's Director
metadata (:mod:`ota_server.services.consent`); the car reads it from there only.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources
from string import Template
from typing import Annotated

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ota_server.api.deps import RuntimeDep
from ota_server.errors import Conflict, InvalidInput, NotFound
from ota_server.services import consent as consents
from ota_server.web.api import get_lookup_limiter
from ota_server.web.pages import SECURITY_HEADERS

router = APIRouter(include_in_schema=False)
_TOKEN = Annotated[str, Path(max_length=100)]


@cache
def _template() -> Template:
    return Template(resources.files("ota_server.web").joinpath("pages", "owner.html").read_text(encoding="utf-8"))


def _notice(shown: consents.OwnerPage) -> str:
    notice = shown.owner_notice
    if notice is None:
        return f"<p>{escape(shown.recall.remedy)}</p>"
    parts = [f"<p id='purpose'>{escape(notice.purpose)}</p>"]
    if notice.what_changes:
        parts.append(f"<p>What changes: {escape(notice.what_changes)}</p>")
    parts.append(f"<p>The update takes about {notice.expected_minutes} minutes.</p>")
    if notice.unavailable_functions:
        parts.append(f"<p>Not available meanwhile: {escape(', '.join(notice.unavailable_functions))}.</p>")
    contact = notice.contact
    reach = ", ".join(escape(x) for x in (contact.phone, contact.email) if x)
    parts.append(f"<p id='contact'>Questions? {escape(contact.name)}{': ' + reach if reach else ''}</p>")
    return "\n  ".join(parts)


def _answer(shown: consents.OwnerPage, nonce: str) -> str:
    if shown.signed_answer is not None:
        said = "accepted" if shown.signed_answer.answer == "accept" else "declined"
        return (
            f"<p id='answered' class='ok'>You {said} this update on {escape(shown.signed_answer.at[:16])} UTC. "
            "Your vehicle reads your answer with the update's signed data the next time it checks.</p>"
        )
    if shown.closed_because:
        return f"<p id='closed'>{escape(shown.closed_because)}</p>"
    return (
        "<form method='post' id='consent-form'>"
        f"<input type='hidden' name='images' value='{escape(shown.images_key, quote=True)}'>"
        f"<input type='hidden' name='nonce' value='{escape(nonce, quote=True)}'>"
        "<p>Do you want your vehicle to install this update? It installs only the version shown above.</p>"
        "<button type='submit' name='answer' value='accept' id='accept'>Install this update</button> "
        "<button type='submit' name='answer' value='decline' id='decline'>No, thanks</button>"
        "</form>"
    )


def render(shown: consents.OwnerPage, nonce: str, problem: str = "") -> str:
    recall = shown.recall
    images = "".join(
        f"<li>ECU {escape(i.ecu_serial)}: version <strong>{escape(i.version)}</strong>, "
        f"SHA-256 <code class='hash'>{escape(i.sha256)}</code></li>"
        for i in shown.images
    )
    answer = _answer(shown, nonce)
    if problem:
        answer = f"<p id='error' class='error' role='alert'>{escape(problem)}</p>" + answer
    return _template().substitute(
        title=escape(recall.title),
        kind="Safety recall" if recall.safety_recall else "Update",
        recall_number=escape(recall.campaign_number),
        vin=escape(shown.vin),
        notice=_notice(shown),
        images=images or "<li>Not assigned yet.</li>",
        state=escape(f"Your vehicle's status: {shown.state.value.replace('_', ' ')}."),
        answer=answer,
    )


def _page(runtime: RuntimeDep, token: str, problem: str = "", status_code: int = 200) -> Response:
    with runtime.sessions() as session:
        try:
            shown = consents.page(session, runtime.director, runtime.owner_links, token)
        except NotFound:
            return HTMLResponse("<p>No such page.</p>", status_code=404, headers=SECURITY_HEADERS)
    nonce = runtime.owner_links.nonce(token, shown.images_key)
    return HTMLResponse(render(shown, nonce, problem), status_code=status_code, headers=SECURITY_HEADERS)


@router.get("/owner/{token}")
def owner_page(token: _TOKEN, request: Request, runtime: RuntimeDep) -> Response:
    get_lookup_limiter(request).take(request.client.host if request.client else None)
    return _page(runtime, token)


@router.post("/owner/{token}")
def owner_answer(
    token: _TOKEN,
    request: Request,
    runtime: RuntimeDep,
    images: Annotated[str, Form(max_length=5000)],
    nonce: Annotated[str, Form(max_length=128)],
    answer: Annotated[str, Form(max_length=16)],
) -> Response:
    """Sign the answer for the car, then show the page again (303: a reload does not post twice)."""
    get_lookup_limiter(request).take(request.client.host if request.client else None)
    with runtime.sessions() as session:
        try:
            consents.answer(
                session,
                runtime.director,
                runtime.owner_links,
                token,
                images=images,
                nonce=nonce,
                given=answer,
                now=runtime.clock(),
            )
        except NotFound:
            return HTMLResponse("<p>No such page.</p>", status_code=404, headers=SECURITY_HEADERS)
        except InvalidInput as exc:
            return _page(runtime, token, str(exc), 422)
        except Conflict as exc:
            return _page(runtime, token, str(exc), 409)
        session.commit()  # the car's next timestamp (always read from the database) names the new chain
    return RedirectResponse(f"/owner/{token}", status_code=303, headers=SECURITY_HEADERS)
