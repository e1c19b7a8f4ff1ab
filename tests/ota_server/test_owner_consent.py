"""The owner page: its per-car link in the notice, and an answer that reaches the car only as signed metadata.

The real agent runs against the in-process server (its transport reads the server's
repository directly); the owner answers on ``/owner/<token>`` while the car waits.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Targets

from firmware_bundles import topics
from firmware_bundles.messages import CampaignNotice, ReportState, encode, parse_campaign_message
from ota_server.db.models import Release
from ota_server.services.owner_links import OwnerLinks
from ota_server.signing.image_repo import target_for
from ota_server.signing.store import DIRECTOR
from tests.ota_server.conftest import Env
from tests.ota_server.helpers import recall_body, upload, vehicle, vin
from tests.ota_server.test_multi_ecu_recalls import _agent
from vehicle_agent.consent import Channel
from vehicle_agent.owner import Consent, ScriptedOwner

S = ReportState
OWNER_NOTICE = {
    "purpose": "Smoother regenerative braking",
    "safety_recall": False,
    "what_changes": "Regenerative braking fades in more gently",
    "expected_minutes": 20,
    "unavailable_functions": ["driving"],
    "contact": {"name": "Recall desk", "role": "Customer care", "phone": "+39 02 0000", "email": "recalls@example.it"},
}


async def launch_consent_campaign(env: Env, car: dict[str, Any]) -> tuple[int, bytes, CampaignNotice]:
    """A non-safety recall that asks consent, launched for ``car``: (campaign id, report key, its notice)."""
    env.clock.now = datetime.now(UTC)  # the agent checks expiry against the real time
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [car]})).status_code == 201
    resp = await env.client.post(
        "/api/v1/vehicles/provision", params={"certificate": "false"}, json={"vins": [car["vin"]]}
    )
    key: bytes = resp.json()["identities"][0]["report_private_key"].encode()
    release = await upload(env.client)
    assert release.status_code == 201, release.text
    body = {**recall_body(release.json()["id"]), "requires_consent": True, "owner_notice": OWNER_NOTICE}
    filed = await env.client.post("/api/v1/recalls", json=body)
    assert filed.status_code == 201, filed.text
    launch = await env.client.post(f"/api/v1/recalls/{filed.json()['id']}/launch")
    assert launch.status_code == 201, launch.text
    await env.runtime.dispatcher.idle()
    notice = next(
        m
        for m in (parse_campaign_message(p.payload) for p in env.publisher.messages)
        if isinstance(m, CampaignNotice) and m.vin == car["vin"]
    )
    return launch.json()["id"], key, notice


def form_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r"<input type='hidden' name='(\w+)' value='([^']*)'>", html))


def page_path(notice: CampaignNotice) -> str:
    assert notice.owner_url is not None
    return notice.owner_url.removeprefix("http://ota.test")


def director_targets(env: Env, vin_: str) -> Targets:
    with env.runtime.sessions() as session:
        from ota_server.db.models import RepoFile

        row = session.get(RepoFile, (DIRECTOR, vin_, "targets.json"))
        assert row is not None
        return Metadata[Targets].from_bytes(bytes(row.data)).signed


async def test_an_answer_on_the_owner_page_reaches_the_car_in_signed_metadata_and_it_installs_that_hash(
    env: Env, tmp_path: Path
) -> None:
    car = vehicle(vin(1))
    campaign_id, key, notice = await launch_consent_campaign(env, car)
    assert notice.requires_consent and notice.owner_url is not None
    assert re.fullmatch(rf"http://ota\.test/owner/{campaign_id}-{car['vin']}-[0-9a-f]{{32}}", notice.owner_url)
    shown: list[str] = []

    async def the_owner_answers_on_the_page(_seconds: float) -> None:
        page = await env.client.get(page_path(notice), headers={"Authorization": ""})
        assert page.status_code == 200, page.text
        shown.append(page.text)
        fields = form_fields(page.text)
        posted = await env.client.post(
            page_path(notice), data={**fields, "answer": "accept"}, headers={"Authorization": ""}
        )
        assert posted.status_code == 303, posted.text

    head_unit = ScriptedOwner([Consent.POSTPONE])  # nobody answers in the car
    agent, link = _agent(env, car, key, tmp_path / "car", owner=head_unit, sleep=the_owner_answers_on_the_page)

    assert await agent.handle(notice) is S.REMEDIED, [(r.state, r.detail) for r in link.reports]

    [offer] = head_unit.offers  # asked once in the car, then the page's signed answer was taken
    [image] = offer.images
    assert image.version == "1.1.0" and image.sha256 in shown[0]
    assert "Smoother regenerative braking" in shown[0] and "Recall desk" in shown[0]
    assert [r.state for r in link.reports] == [
        S.NOTIFIED,
        S.DEFERRED,
        S.CONSENTED,
        S.DOWNLOADING,
        S.VERIFYING,
        S.INSTALLING,
        S.REBOOTING,
        S.REMEDIED,
    ]
    assert agent.journal.data.images[car["ecus"][0]["serial"]].sha256 == image.sha256
    consent = [e for e in agent.journal.data.campaigns[campaign_id].owner_log if e.what == "consent"]
    assert [(e.text, e.channel, e.images) for e in consent] == [
        ("postpone", Channel.HEAD_UNIT, image.sha256),
        ("accept", Channel.OWNER_PAGE, image.sha256),
    ]
    signed = director_targets(env, car["vin"]).unrecognized_fields["consent"]
    assert (signed["campaign_id"], signed["images"], signed["answer"]) == (campaign_id, image.sha256, "accept")

    await env.inject(*((topics.status_topic(car["vin"]), encode(r)) for r in link.reports))
    timeline = (await env.client.get(f"/api/v1/vehicles/{car['vin']}/timeline")).text
    assert "consented" in timeline and "owner_page" in timeline and image.sha256 in timeline
    assert "consent_answer" in timeline  # from the owner-notification log, not only the car's report
    [recall] = (await env.client.get("/api/v1/recalls")).json()["items"]
    logged = (await env.client.get(f"/api/v1/recalls/{recall['id']}/owner-notifications?format=csv")).text
    [answered] = [line for line in logged.splitlines() if "consent_answer" in line]
    assert "owner_page" in answered and f"accept {image.sha256}" in answered
    after = await env.client.get(page_path(notice), headers={"Authorization": ""})
    assert "You accepted this update" in after.text


async def test_forged_answers_are_refused_and_sign_nothing(env: Env) -> None:
    car = vehicle(vin(2))
    campaign_id, _key, notice = await launch_consent_campaign(env, car)
    path = page_path(notice)
    page = await env.client.get(path, headers={"Authorization": ""})
    fields = form_fields(page.text)
    with env.runtime.sessions() as session:
        before = env.runtime.director.assigned(session, car["vin"])

    wrong_nonce = await env.client.post(
        path, data={**fields, "nonce": "0" * 64, "answer": "accept"}, headers={"Authorization": ""}
    )
    assert wrong_nonce.status_code == 422 and "not issued by this page" in wrong_nonce.text
    other_images = await env.client.post(
        path, data={**fields, "images": "f" * 64, "answer": "accept"}, headers={"Authorization": ""}
    )
    assert other_images.status_code == 422  # the nonce binds the images the page showed
    guessed = path[:-4] + "0000"
    assert (await env.client.get(guessed)).status_code == 404
    assert (await env.client.post(guessed, data={**fields, "answer": "accept"})).status_code == 404
    elsewhere = OwnerLinks(b"another server's secret", "http://ota.test").token(car["vin"], campaign_id)
    assert (await env.client.get(f"/owner/{elsewhere}")).status_code == 404

    with env.runtime.sessions() as session:
        assert env.runtime.director.assigned(session, car["vin"]) == before  # nothing signed


async def test_a_page_shown_before_the_assignment_changed_cannot_answer_for_the_new_one(env: Env) -> None:
    car = vehicle(vin(3))
    campaign_id, _key, notice = await launch_consent_campaign(env, car)
    path = page_path(notice)
    fields = form_fields((await env.client.get(path, headers={"Authorization": ""})).text)
    newer = await upload(env.client, version="1.2.0", counter=3)
    assert newer.status_code == 201, newer.text
    with env.runtime.sessions() as session:
        director = env.runtime.director
        images, _ = director.assigned(session, car["vin"])
        [(serial, old)] = images.items()
        release = session.get(Release, newer.json()["id"])
        assert release is not None
        target = target_for(release)
        director.queue(session, {car["vin"]: {serial: target}}, env.clock())
        session.commit()

    stale = await env.client.post(path, data={**fields, "answer": "accept"}, headers={"Authorization": ""})

    assert stale.status_code == 409 and "changed since the page was shown" in stale.text
    assert (
        target.hashes["sha256"] in stale.text and old.hashes["sha256"] not in stale.text
    )  # the page shows the new one
    fresh = form_fields(stale.text)
    accepted = await env.client.post(path, data={**fresh, "answer": "accept"}, headers={"Authorization": ""})
    assert accepted.status_code == 303
    signed = director_targets(env, car["vin"]).unrecognized_fields["consent"]
    assert signed["images"] == target.hashes["sha256"] and signed["campaign_id"] == campaign_id


async def test_a_safety_recall_page_shows_the_update_but_asks_nothing(env: Env) -> None:
    car = vehicle(vin(4))
    assert (await env.client.post("/api/v1/vehicles/batch", json={"vehicles": [car]})).status_code == 201
    release = await upload(env.client)
    filed = await env.client.post("/api/v1/recalls", json={**recall_body(release.json()["id"]), "safety_recall": True})
    assert filed.status_code == 201, filed.text
    rid = filed.json()["id"]
    operator = await env.headers_for("operator-safety", "operator")  # a safety recall: two people launch it
    assert (await env.client.post(f"/api/v1/recalls/{rid}/launch", headers=operator)).status_code == 202
    approver = await env.headers_for("approver-safety", "approver")
    assert (await env.client.post(f"/api/v1/recalls/{rid}/approve", headers=approver)).status_code == 201
    await env.runtime.dispatcher.idle()
    notice = next(
        m
        for m in (parse_campaign_message(p.payload) for p in env.publisher.messages)
        if isinstance(m, CampaignNotice) and m.vin == car["vin"]
    )
    page = await env.client.get(page_path(notice), headers={"Authorization": ""})
    assert page.status_code == 200 and "installs without asking" in page.text and "consent-form" not in page.text
    fields = {"images": "x", "nonce": env.runtime.owner_links.nonce(page_path(notice).rsplit("/", 1)[1], "x")}
    refused = await env.client.post(page_path(notice), data={**fields, "answer": "decline"})
    assert refused.status_code == 409 and "installs without asking" in refused.text


async def test_the_owner_page_shows_the_car_and_whom_to_call_in_the_owners_language(env: Env) -> None:
    """The same facts as /lookup (make, model, year, manufacturer, the named contact), in Italian when asked."""
    car = vehicle(vin(5))
    _, _, notice = await launch_consent_campaign(env, car)
    english = await env.client.get(page_path(notice), headers={"Authorization": ""})
    assert english.status_code == 200, english.text
    assert 'lang="en"' in english.text and "Install this update" in english.text
    assert "Acme Sedan, model year 2022" in english.text and "Recall desk" in english.text
    italian = await env.client.get(
        page_path(notice), headers={"Authorization": "", "Accept-Language": "it-IT,it;q=0.9"}
    )
    assert italian.status_code == 200, italian.text
    assert 'lang="it"' in italian.text and "Installa questo aggiornamento" in italian.text
    assert "Acme Sedan" in italian.text and "Recall desk" in italian.text and "Install this update" not in italian.text
    fields = form_fields(italian.text)  # the form is the same one: the answer does not depend on the language
    assert fields == form_fields(english.text)


async def test_a_car_an_operator_took_out_of_the_recall_is_told_so_on_its_page(env: Env) -> None:
    """Outside test (issue 18): a car recorded fixed at a dealer was told "Your car has already answered or
    started (it is remedied at dealer)"; the car did neither."""
    car = vehicle(vin(6))
    campaign_id, _key, notice = await launch_consent_campaign(env, car)
    outcome = {"outcome": "remedied_at_dealer", "evidence": "RO 1", "reference": "RO-1"}
    url = f"/api/v1/campaigns/{campaign_id}/vehicles/{car['vin']}/outcome"
    assert (await env.client.post(url, json=outcome)).status_code == 200
    page = await env.client.get(page_path(notice), headers={"Authorization": ""})
    assert page.status_code == 200
    assert "remedied at a dealer" in page.text and "already answered" not in page.text
    assert "consent-form" not in page.text
