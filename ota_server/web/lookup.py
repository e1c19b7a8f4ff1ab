"""The public VIN look-up (``/lookup`` and ``/api/v1/public/recalls``), as an owner sees it.

The facts come from :func:`ota_server.web.owner_view.build`; this module renders them as
JSON or as a server-rendered page (every value HTML-escaped, no script) in the owner's
language (:mod:`ota_server.web.i18n`). Only what a regulator's recall site would show
leaves it: the car's make, model and year, each recall's public text, a coarse status with
a date, what happened and what to do, the recall's contact. No campaign ids, nonces,
attempts, failure reasons or other VINs; look-ups are rate-limited per address.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from functools import cache
from html import escape
from importlib import resources
from string import Template

from sqlalchemy.orm import Session

from ota_server.clock import Clock
from ota_server.errors import InvalidInput, RateLimited
from ota_server.infra.ratelimit import TokenBuckets
from ota_server.runtime import Runtime
from ota_server.web import owner_view
from ota_server.web.i18n import text
from ota_server.web.owner_view import OwnerSettings, OwnerView, RecallView
from ota_server.web.schemas import PublicContact, PublicLookup, PublicRecall
from ota_server.web.timeline import normalised_vin


def lookup(session: Session, raw_vin: str, now: datetime, lang: str, owner: OwnerSettings) -> PublicLookup:
    """Raise InvalidInput (422) for a malformed VIN; otherwise the recalls affecting it."""
    view = owner_view.build(session, normalised_vin(raw_vin), now, lang, owner)
    return PublicLookup(
        vin=view.vin,
        lang=view.lang,
        known=view.known,
        make=view.make,
        model=view.model,
        model_year=view.model_year,
        manufacturer=view.manufacturer,
        checked_at=view.checked_at,
        open_recalls=view.open_recalls,
        recalls=[_public(r) for r in view.recalls],
        message=view.summary,
        coverage=view.coverage,
        dealer_locator_url=view.dealer_locator_url,
    )


def _public(r: RecallView) -> PublicRecall:
    contact = r.contact
    return PublicRecall(
        recall_number=r.number,
        title=r.title,
        safety_recall=r.safety_recall,
        summary=r.problem,
        safety_risk=r.risk,
        remedy=r.remedy,
        status=r.status,
        status_text=r.status_text,
        fixed=r.fixed,
        remedied_on=r.remedied_on,
        what_happened=r.what_happened,
        what_to_do=r.what_to_do,
        contact=PublicContact(name=contact.name, role=contact.role, phone=contact.phone, email=contact.email)
        if contact
        else None,
        expected_minutes=r.notice.expected_minutes if r.notice else None,
        unavailable_functions=list(r.notice.unavailable_functions) if r.notice else [],
    )


@cache
def _template() -> Template:
    return Template(resources.files("ota_server.web").joinpath("pages", "lookup.html").read_text(encoding="utf-8"))


def page(lang: str, vin: str = "", view: OwnerView | None = None, error: str = "", keep_lang: bool = False) -> str:
    """The look-up page in ``lang``: the form (asking in ``lang`` again if ``keep_lang``), the result or the error."""
    t = _words(lang)
    result = result_html(view) if view is not None else ""
    return _template().substitute(
        t,
        vin_value=escape(vin),
        vin_invalid=' aria-invalid="true"' if error else "",
        lang_field=f'<input type="hidden" name="lang" value="{escape(lang)}">' if keep_lang else "",
        error=f'<p id="error" class="error" role="alert">{escape(error)}</p>' if error else "",
        result=result,
        other_lang=_other_languages(lang, vin),
    )


def answer_page(
    runtime: Runtime, limiter: AddressBuckets, client: str | None, raw_vin: str | None, lang: str, keep_lang: bool
) -> tuple[str, int]:
    """The page for ``raw_vin`` (the empty form without one) and its status: 422 bad VIN, 429 too many."""
    vin = (raw_vin or "").strip()[:32]
    if not vin:
        return page(lang, keep_lang=keep_lang), 200
    try:
        limiter.take(client)
    except RateLimited:
        return page(lang, vin, error=text(lang, "too_many"), keep_lang=keep_lang), 429
    try:
        normal = normalised_vin(vin)
    except InvalidInput as exc:
        reason = exc.message.removeprefix("not a valid VIN: ")
        return page(lang, vin, error=text(lang, "invalid_vin", reason=reason), keep_lang=keep_lang), 422
    with runtime.sessions() as session:
        view = owner_view.build(session, normal, runtime.clock(), lang, OwnerSettings.of(runtime.settings))
    return page(lang, normal, view, keep_lang=keep_lang), 200


def _words(lang: str) -> dict[str, str]:
    keys = ("html_lang", "page_title", "brand", "heading", "intro", "vin_label", "vin_help", "check")
    return {k: escape(text(lang, k)) for k in keys}


def _other_languages(lang: str, vin: str) -> str:
    names = {"en": "English", "it": "Italiano"}
    query = f"&amp;vin={escape(vin)}" if vin else ""
    links = [
        f'<a href="/lookup?lang={code}{query}" hreflang="{code}" lang="{code}">{name}</a>'
        for code, name in names.items()
        if code != lang
    ]
    return " · ".join(links)


def result_html(view: OwnerView) -> str:
    """The owner's facts about one VIN (the car, each recall, whom to call): /lookup and the owner page."""
    lang = view.lang
    parts = [f'<section class="card vehicle" id="vehicle"><h2>{escape(text(lang, "vin_heading", vin=view.vin))}</h2>']
    if view.known:
        line = text(lang, "vehicle", make=view.make, model=view.model, year=view.model_year)
        parts.append(f'<p id="car" class="car">{escape(line)}</p>')
    parts.append(f"<p>{escape(text(lang, 'made_by', manufacturer=view.manufacturer))}</p>")
    summary_class = "error" if view.open_recalls or not view.known else "ok"
    parts.append(f'<p id="summary" class="{summary_class}">{escape(view.summary)}</p></section>')
    parts.extend(_recall_card(r, lang) for r in view.recalls)
    if view.dealer_locator_url:
        parts.append(
            f'<p class="dealer"><a id="dealer-locator" href="{escape(view.dealer_locator_url)}" rel="noopener">'
            f"{escape(text(lang, 'dealer_locator'))}</a></p>"
        )
    parts.append(f'<p id="coverage" class="note">{escape(view.coverage)}</p>')
    when = view.checked_at.strftime("%Y-%m-%d %H:%M")
    parts.append(f'<p class="muted">{escape(text(lang, "checked_at", when=when))}</p>')
    return "\n".join(parts)


def _recall_card(r: RecallView, lang: str) -> str:
    kind = text(lang, "safety_recall" if r.safety_recall else "recall")
    rows = [
        (text(lang, "what_happened"), r.what_happened),
        (text(lang, "what_to_do"), r.what_to_do),
        (text(lang, "problem"), r.problem),
        (text(lang, "risk"), r.risk),
        (text(lang, "remedy"), r.remedy),
    ]
    if r.notice is not None and not r.fixed:
        about = text(lang, "update_minutes", minutes=r.notice.expected_minutes)
        if r.notice.unavailable_functions:
            about += " " + text(lang, "unavailable", functions=", ".join(r.notice.unavailable_functions))
        rows.append((text(lang, "about_update"), about))
    cells = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    state = "fixed" if r.fixed else "open"
    html = (
        f'<section class="card recall {state}" data-status="{r.status}">'
        f"<h2>{escape(text(lang, 'recall_heading', number=r.number, title=r.title))}</h2>"
        f'<p class="kind">{escape(kind)}</p><p class="status">{escape(r.status_text)}</p><dl>{cells}</dl>'
    )
    if r.contact is not None:
        c = r.contact
        reach = []
        if c.phone:
            reach.append(f'<a href="tel:{escape(c.phone.replace(" ", ""))}">{escape(c.phone)}</a>')
        if c.email:
            reach.append(f'<a href="mailto:{escape(c.email)}">{escape(c.email)}</a>')
        role = f" ({escape(c.role)})" if c.role else ""
        html += (
            f'<p class="contact">{escape(text(lang, "contact"))} <strong class="contact-name">{escape(c.name)}</strong>'
            f"{role}: {' · '.join(reach)}</p>"
        )
    return html + "</section>"


class AddressBuckets:
    """Token buckets per client address (IPv6 by /64), at most ``max_keys`` kept (oldest dropped).

    The public look-up has no token to key by; bounding the table keeps a flood of
    addresses from growing memory without limit.
    """

    def __init__(self, per_minute: float, burst: int, clock: Clock, *, max_keys: int = 10_000) -> None:
        self._buckets = TokenBuckets(per_minute / 60.0, burst, clock, max_keys=max_keys)

    def __len__(self) -> int:
        return len(self._buckets)

    @staticmethod
    def key(address: str | None) -> str:
        if not address:
            return "unknown"
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address[:64]
        if ip.version == 6:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip)

    def take(self, address: str | None) -> None:
        wait = self._buckets.wait_for(self.key(address))
        if wait:
            raise RateLimited(f"too many look-ups from your address; try again in {wait:.0f}s", wait)
