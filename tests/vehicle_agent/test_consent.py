"""Consent bound to what is signed: asked after verification, for the exact images, and only those installed.

An owner-page answer counts only inside the Director's verified targets metadata and only
for the campaign and images the car would install; the head unit answers through the
files of :class:`vehicle_agent.consent.ConsentBox`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from firmware_bundles import repo_paths
from firmware_bundles.messages import CampaignNotice, FailureReason, ReportState, StatusReport
from vehicle_agent.consent import Channel, ConsentBox, ConsentError, HeadUnitOwner, Offer
from vehicle_agent.owner import Consent, ScriptedOwner

from .conftest import Car
from .fakes import REPO, SERIAL, VIN, FakeServer
from .test_campaign_gate import INSTALL, Pauses, StillWaiting, feature_notice, nothing

S = ReportState
AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC).isoformat()


@pytest.fixture
def v2(server: FakeServer) -> TargetFile:
    target = server.release("2.0", 2)
    server.assign({SERIAL: target})
    return target


def sha(target: TargetFile) -> str:
    return target.hashes["sha256"]


def director_targets_fetched(server: FakeServer) -> bool:
    prefix = repo_paths.director_metadata_url(REPO, VIN)
    return any(u.startswith(prefix) and u.endswith("targets.json") for u in server.transport.requests)


async def test_a_non_safety_update_asks_after_verifying_and_shows_the_signed_version_and_hash(
    car: Car, server: FakeServer, v2: TargetFile
) -> None:
    fetched_when_asked: list[bool] = []

    class Watching(ScriptedOwner):
        async def ask_consent(self, notice: CampaignNotice, offer: Offer) -> Consent:
            fetched_when_asked.append(director_targets_fetched(server))
            return await super().ask_consent(notice, offer)

    owner = Watching()
    car.build(owner=owner)

    assert await car.agent.handle(feature_notice(server)) is S.REMEDIED

    assert fetched_when_asked == [True]  # the signed metadata came first
    [offer] = owner.offers
    assert [(i.ecu_serial, i.version, i.sha256) for i in offer.images] == [(SERIAL, "2.0", sha(v2))]
    assert car.states == [S.NOTIFIED, S.CONSENTED, *INSTALL]
    assert sha(v2) in car.link.reports[1].detail and "2.0" in car.link.reports[1].detail
    record = car.agent.journal.data.campaigns[1]
    assert record.consent_images == sha(v2)
    [event] = [e for e in record.owner_log if e.what == "consent"]
    assert (event.text, event.images, event.channel) == ("accept", sha(v2), Channel.HEAD_UNIT)
    assert car.running_version() == "2.0"


async def test_a_changed_assignment_asks_again_and_installs_only_the_newly_consented_image(
    car: Car, server: FakeServer, v2: TargetFile
) -> None:
    v3 = server.release("3.0", 3)

    class ReassignedAfterYes(ScriptedOwner):
        async def ask_consent(self, notice: CampaignNotice, offer: Offer) -> Consent:
            answer = await super().ask_consent(notice, offer)
            if self.asked == 1:
                server.assign({SERIAL: v3})  # the Director changes its mind after the owner's yes
            return answer

    owner = ReassignedAfterYes([Consent.ACCEPT, Consent.ACCEPT])
    car.build(owner=owner, sleep=Pauses(nothing))

    assert await car.agent.handle(feature_notice(server)) is S.REMEDIED

    assert [o.images[0].version for o in owner.offers] == ["2.0", "3.0"]
    assert car.states == [S.NOTIFIED, S.CONSENTED, S.DOWNLOADING, S.DEFERRED, S.CONSENTED, *INSTALL]
    deferred = car.link.reports[3]
    assert (
        deferred.detail.startswith("consent_outdated: ") and sha(v2) in deferred.detail and sha(v3) in deferred.detail
    )
    assert car.running_version() == "3.0"
    assert car.agent.journal.data.images[SERIAL].sha256 == sha(v3)


async def test_an_owner_page_answer_in_the_signed_metadata_installs_exactly_that_hash(
    car: Car, server: FakeServer, v2: TargetFile
) -> None:
    server.assign({SERIAL: v2}, consent={"campaign_id": 1, "images": sha(v2), "answer": "accept", "at": AT})
    owner = ScriptedOwner([Consent.POSTPONE])  # the head unit never answers
    car.build(owner=owner)

    assert await car.agent.handle(feature_notice(server)) is S.REMEDIED

    assert owner.asked == 0
    assert car.states == [S.NOTIFIED, S.CONSENTED, *INSTALL]
    assert "owner_page" in car.link.reports[1].detail
    [event] = [e for e in car.agent.journal.data.campaigns[1].owner_log if e.what == "consent"]
    assert (event.text, event.images, event.channel) == ("accept", sha(v2), Channel.OWNER_PAGE)
    assert car.agent.journal.data.images[SERIAL].sha256 == sha(v2)


async def test_an_owner_page_decline_in_the_signed_metadata_installs_nothing(
    car: Car, server: FakeServer, v2: TargetFile
) -> None:
    server.assign({SERIAL: v2}, consent={"campaign_id": 1, "images": sha(v2), "answer": "decline", "at": AT})
    car.build(owner=ScriptedOwner([Consent.ACCEPT]))
    assert await car.agent.handle(feature_notice(server)) is S.DECLINED
    car.assert_untouched()


@pytest.mark.parametrize(
    ("consent", "why"),
    [
        ({"campaign_id": 1, "images": "0" * 64, "answer": "accept", "at": AT}, "it was given for images " + "0" * 64),
        ({"campaign_id": 9, "images": None, "answer": "accept", "at": AT}, "it is for campaign 9"),
        ({"campaign_id": 1, "images": None, "answer": "yes please", "at": AT}, "is not accept or decline"),
    ],
)
async def test_a_signed_answer_for_other_images_or_campaign_installs_nothing(
    car: Car, server: FakeServer, v2: TargetFile, consent: dict[str, object], why: str
) -> None:
    consent = {**consent, "images": consent["images"] or sha(v2)}
    server.assign({SERIAL: v2}, consent=consent)
    owner = ScriptedOwner([Consent.POSTPONE])
    car.build(owner=owner, sleep=Pauses())  # no second look: still waiting is the end

    with pytest.raises(StillWaiting):
        await car.agent.handle(feature_notice(server))

    assert car.states == [S.NOTIFIED, S.DEFERRED] and owner.asked == 1
    car.assert_untouched()
    [ignored] = [e for e in car.agent.journal.data.campaigns[1].owner_log if e.what == "consent_ignored"]
    assert why in ignored.text


async def test_an_unsigned_answer_slipped_into_the_metadata_fails_the_signature_and_installs_nothing(
    car: Car, server: FakeServer, v2: TargetFile
) -> None:
    files = server.assign({SERIAL: v2})
    forged = json.loads(files["targets.json"])
    forged["signed"]["consent"] = {"campaign_id": 1, "images": sha(v2), "answer": "accept", "at": AT}
    server.serve_director({"targets.json": json.dumps(forged).encode()})
    owner = ScriptedOwner([Consent.POSTPONE])
    car.build(owner=owner)

    assert await car.agent.handle(feature_notice(server)) is S.FAILED

    last = car.link.reports[-1]
    assert last.reason is FailureReason.METADATA_SIGNATURE_INVALID and owner.asked == 0
    car.assert_untouched()


async def test_the_head_unit_answers_through_the_consent_box(car: Car, server: FakeServer, v2: TargetFile) -> None:
    box = ConsentBox(car.state_dir / "consent", durable=False)
    requests: list[dict[str, object]] = []

    def answer_on_the_head_unit() -> None:
        request = box.pending()
        assert request is not None
        requests.append(request)
        box.answer(Consent.ACCEPT, channel=Channel.HEAD_UNIT)

    car.build(owner=HeadUnitOwner(box), sleep=Pauses(answer_on_the_head_unit))

    assert await car.agent.handle(feature_notice(server)) is S.REMEDIED

    [request] = requests
    assert request["images_key"] == sha(v2) and request["campaign_id"] == 1
    assert request["images"] == [{"ecu_serial": SERIAL, "version": "2.0", "sha256": sha(v2), "length": v2.length}]
    assert "Limit charging current" in str(request["text"])
    assert car.states == [S.NOTIFIED, S.DEFERRED, S.CONSENTED, *INSTALL]
    assert box.pending() is None  # settled: nothing left for the head unit to show


async def test_a_head_unit_answer_for_other_images_is_not_taken(car: Car, server: FakeServer, v2: TargetFile) -> None:
    box = ConsentBox(car.state_dir / "consent", durable=False)

    def stale_answer() -> None:
        box.answer(Consent.ACCEPT)
        body = json.loads(box.answer_path.read_bytes())
        box.answer_path.write_text(json.dumps({**body, "images_key": "f" * 64}))

    car.build(owner=HeadUnitOwner(box), sleep=Pauses(stale_answer))
    with pytest.raises(StillWaiting):
        await car.agent.handle(feature_notice(server))
    assert car.states == [S.NOTIFIED, S.DEFERRED]
    car.assert_untouched()
    assert not box.answer_path.exists()


def test_no_request_no_answer(tmp_path: Path) -> None:
    with pytest.raises(ConsentError, match="no consent request pending"):
        ConsentBox(tmp_path / "consent").answer(Consent.ACCEPT)


async def test_vehicle_agent_consent_show_and_accept_drive_the_default_head_unit(
    server: FakeServer, tmp_path: Path, v2: TargetFile
) -> None:
    from typer.testing import CliRunner

    from firmware_bundles.provisioning import write_bundle
    from firmware_bundles.report_signing import generate_report_key, private_key_pem
    from vehicle_agent import cli
    from vehicle_agent.agent import Agent
    from vehicle_agent.config import load_config
    from vehicle_agent.link import FakeLink

    identity = {"report_private_key": private_key_pem(generate_report_key()).decode()}
    path = write_bundle(tmp_path, {**identity, "agent_config": server.agent_config_doc()})
    runner = CliRunner()
    shown: list[str] = []

    def the_owner_answers_from_a_shell() -> None:
        result = runner.invoke(cli.app, ["consent", "show", "--config", str(path)])
        assert result.exit_code == 0, result.output
        shown.append(result.output)
        result = runner.invoke(cli.app, ["consent", "accept", "--config", str(path)])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"accept: campaign 1, images {sha(v2)}")

    link = FakeLink(VIN)
    agent = Agent(
        load_config(path), link=link, transport=server.transport, sleep=Pauses(the_owner_answers_from_a_shell)
    )
    assert await agent.handle(feature_notice(server)) is S.REMEDIED

    assert json.loads(shown[0])["images"][0]["version"] == "2.0"
    assert [r.state for r in link.reports] == [S.NOTIFIED, S.DEFERRED, S.CONSENTED, *INSTALL]
    assert "(via cli)" in link.reports[2].detail
    result = runner.invoke(cli.app, ["consent", "accept", "--config", str(path)])
    assert result.exit_code == 2 and "no consent request pending" in result.output


async def test_an_owner_page_answer_withdraws_the_head_units_question(
    car: Car, server: FakeServer, v2: TargetFile
) -> None:
    box = ConsentBox(car.state_dir / "consent", durable=False)
    pending: list[bool] = []

    def answered_on_the_page() -> None:
        pending.append(box.pending() is not None)
        server.assign({SERIAL: v2}, consent={"campaign_id": 1, "images": sha(v2), "answer": "accept", "at": AT})

    def on_report(report: StatusReport) -> None:
        if report.state is S.CONSENTED:
            pending.append(box.pending() is not None)

    car.build(owner=HeadUnitOwner(box), sleep=Pauses(answered_on_the_page), on_report=on_report)

    assert await car.agent.handle(feature_notice(server)) is S.REMEDIED

    assert pending == [True, False]  # the head unit showed the question, withdrawn once answered
    assert "(via owner_page)" in car.link.reports[2].detail
