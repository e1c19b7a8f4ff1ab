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
from ota_server.web import owner_view
from ota_server.web.api import get_lookup_limiter
from ota_server.web.i18n import choose, text
from ota_server.web.lookup import result_html
from ota_server.web.pages import SECURITY_HEADERS

router = APIRouter(include_in_schema=False)
_TOKEN = Annotated[str, Path(max_length=100)]


@cache
def _template() -> Template:
    return Template(resources.files("ota_server.web").joinpath("pages", "owner.html").read_text(encoding="utf-8"))


def _notice(shown: consents.OwnerPage, lang: str) -> str:
    notice = shown.owner_notice
    if notice is None:
        return f"<p>{escape(shown.recall.remedy)}</p>"
    parts = [f"<p id='purpose'>{escape(notice.purpose)}</p>"]
    if notice.what_changes:
        parts.append(f"<p>{escape(text(lang, 'owner_what_changes', text=notice.what_changes))}</p>")
    parts.append(f"<p>{escape(text(lang, 'owner_minutes', minutes=notice.expected_minutes))}</p>")
    if notice.unavailable_functions:
        functions = ", ".join(notice.unavailable_functions)
        parts.append(f"<p>{escape(text(lang, 'owner_unavailable', functions=functions))}</p>")
    contact = notice.contact
    reach = ", ".join(escape(x) for x in (contact.phone, contact.email) if x)
    who = escape(text(lang, "owner_questions", name=contact.name))
    parts.append(f"<p id='contact'>{who}{': ' + reach if reach else ''}</p>")
    return "\n  ".join(parts)


def _answer(shown: consents.OwnerPage, nonce: str, lang: str) -> str:
    if shown.signed_answer is not None:
        key = "owner_accepted" if shown.signed_answer.answer == "accept" else "owner_declined"
        return f"<p id='answered' class='ok'>{escape(text(lang, key, when=shown.signed_answer.at[:16]))}</p>"
    if shown.closed_because:
        return f"<p id='closed'>{escape(shown.closed_because)}</p>"
    accept, decline = escape(text(lang, "owner_accept")), escape(text(lang, "owner_decline"))
    return (
        "<form method='post' id='consent-form'>"
        f"<input type='hidden' name='images' value='{escape(shown.images_key, quote=True)}'>"
        f"<input type='hidden' name='nonce' value='{escape(nonce, quote=True)}'>"
        f"<p>{escape(text(lang, 'owner_question'))}</p>"
        f"<button type='submit' name='answer' value='accept' id='accept'>{accept}</button> "
        f"<button type='submit' name='answer' value='decline' id='decline'>{decline}</button>"
        "</form>"
    )


def render(shown: consents.OwnerPage, nonce: str, lang: str, facts: str, problem: str = "") -> str:
    """The page in ``lang``; ``facts`` is the owner's view of the car (as on /lookup), already HTML."""
    recall = shown.recall
    images = "".join(
        "<li>"
        + text(
            lang,
            "owner_image",
            ecu=escape(i.ecu_serial),
            version=f"<strong>{escape(i.version)}</strong>",
            sha256=f"<code class='hash'>{escape(i.sha256)}</code>",
        )
        + "</li>"
        for i in shown.images
    )
    answer = _answer(shown, nonce, lang)
    if problem:
        answer = f"<p id='error' class='error' role='alert'>{escape(problem)}</p>" + answer
    kind = text(lang, "safety_recall" if recall.safety_recall else "owner_update")
    return _template().substitute(
        lang=escape(text(lang, "html_lang")),
        brand=escape(text(lang, "owner_brand")),
        title=escape(recall.title),
        recall_for=escape(text(lang, "owner_for", kind=kind, number=recall.campaign_number, vin=shown.vin)),
        the_update=escape(text(lang, "owner_the_update")),
        exactly=escape(text(lang, "owner_exactly")),
        notice=_notice(shown, lang),
        images=images or f"<li>{escape(text(lang, 'owner_not_assigned'))}</li>",
        state=escape(text(lang, "owner_status", state=shown.state.value.replace("_", " "))),
        answer=answer,
        your_vehicle=escape(text(lang, "owner_your_vehicle")),
        facts=facts,
    )


def _language(request: Request) -> str:
    return choose(request.headers.get("accept-language"), request.query_params.get("lang"))


def _missing(lang: str) -> Response:
    return HTMLResponse(f"<p>{escape(text(lang, 'owner_no_page'))}</p>", status_code=404, headers=SECURITY_HEADERS)


def _page(runtime: RuntimeDep, token: str, lang: str, problem: str = "", status_code: int = 200) -> Response:
    with runtime.sessions() as session:
        try:
            shown = consents.page(session, runtime.director, runtime.owner_links, token)
        except NotFound:
            return _missing(lang)
        view = owner_view.build(
            session, shown.vin, runtime.clock(), lang, owner_view.OwnerSettings.of(runtime.settings)
        )
    nonce = runtime.owner_links.nonce(token, shown.images_key)
    page = render(shown, nonce, lang, result_html(view), problem)
    return HTMLResponse(page, status_code=status_code, headers=SECURITY_HEADERS)


@router.get("/owner/{token}")
def owner_page(token: _TOKEN, request: Request, runtime: RuntimeDep) -> Response:
    get_lookup_limiter(request).take(request.client.host if request.client else None)
    return _page(runtime, token, _language(request))


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
            return _missing(_language(request))
        except InvalidInput as exc:
            return _page(runtime, token, _language(request), str(exc), 422)
        except Conflict as exc:
            return _page(runtime, token, _language(request), str(exc), 409)
        session.commit()  # the car's next timestamp (always read from the database) names the new chain
    return RedirectResponse(f"/owner/{token}", status_code=303, headers=SECURITY_HEADERS)
