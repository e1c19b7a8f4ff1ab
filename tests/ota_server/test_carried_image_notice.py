"""Notices that also carry the Image repository's files (issue #19, ``OTA_NOTICE_CARRIES_IMAGE_METADATA``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from firmware_bundles import topics
from firmware_bundles.messages import MAX_MESSAGE_BYTES, CampaignNotice, ImageMetadata, encode, parse_notice
from ota_server.services.campaign_fleet import carried, image_files
from tests.ota_server.conftest import make_settings, running
from tests.ota_server.helpers import launched, vin
from tests.ota_server.test_director_reads import ReaderTransport, _car
from vehicle_agent.verifier import Carried, Verifier

NAMES = ("timestamp", "snapshot", "targets")


async def test_the_notice_carries_the_served_image_files_and_the_car_needs_no_image_request(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "server", notice_carries_metadata=True, notice_carries_image_metadata=True)
    async with running(settings) as env:
        env.clock.now = datetime.now(UTC)
        v = vin(1)
        await launched(env.client, [v])
        await env.runtime.dispatcher.idle()
        (published,) = env.publisher.on(topics.campaign_topic(v))
        assert len(published.payload) <= MAX_MESSAGE_BYTES
        notice = parse_notice(published.payload)
        assert notice.image_metadata is not None and notice.director_metadata is not None
        reader = env.runtime.repo_reader
        for name in NAMES:  # exactly the bytes served over HTTP
            assert getattr(notice.image_metadata, name).encode() == reader.image(f"{name}.json")

        transport = ReaderTransport(reader)
        verifier = Verifier(_car(env, v, tmp_path / "car"), transport)
        verified = verifier.verify(Carried(notice.director_metadata, notice.image_metadata))
        assert [a.ecu_serial for a in verified.assignments] == [f"S-{v[-6:]}"]
        assert verifier.carried_image_refusal is None
        chain = [p for p in transport.requests if p.endswith(("timestamp.json", "snapshot.json", "targets.json"))]
        assert chain == []  # neither repository's chain was requested: only root probes
        assert len(transport.requests) == 2


async def test_without_the_setting_notices_carry_no_image_files(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path, notice_carries_metadata=True)) as env:
        v = vin(2)
        await launched(env.client, [v])
        await env.runtime.dispatcher.idle()
        (published,) = env.publisher.on(topics.campaign_topic(v))
        assert b"image_metadata" not in published.payload  # what agents before session 9 parse


async def test_image_files_that_would_pass_the_notice_size_are_not_carried(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, notice_carries_metadata=True, notice_carries_image_metadata=True)
    async with running(settings) as env:
        v = vin(3)
        await launched(env.client, [v])
        await env.runtime.dispatcher.idle()
        (published,) = env.publisher.on(topics.campaign_topic(v))
        notice = parse_notice(published.payload)
        assert notice.image_metadata is not None
        big = "x" * 11_000  # each file within its own bound, the three together past the notice's
        huge = ImageMetadata(timestamp=big, snapshot=big, targets=big)
        bare = notice.model_copy(update={"image_metadata": None})
        assert carried(bare, None, huge) is bare
        assert len(encode(bare.model_copy(update={"image_metadata": huge}))) > MAX_MESSAGE_BYTES
        assert image_files(lambda name: b"y" * 20_000) is None  # a file past CARRIED_FILE_CHARS


def _notice() -> CampaignNotice:
    return CampaignNotice(
        campaign_id=1,
        vin=vin(1),
        nonce="n" * 32,
        recall_number="26V-001",
        title="Brake controller update",
        repo_url="http://ota.test/repo",
        issued_at=datetime(2026, 12, 5, tzinfo=UTC),
    )


def _chain(chars: int) -> dict[str, tuple[int, bytes]]:
    return {f"{name}.json": (1, b"d" * chars) for name in ("timestamp", "snapshot", "targets")}


def _image(chars: int) -> ImageMetadata:
    return ImageMetadata(timestamp="i" * chars, snapshot="i" * chars, targets="i" * chars)


def test_a_notice_carries_as_much_as_fits_the_directors_files_first() -> None:
    """Both repositories' files when they fit, else the Director's alone, else the Image's alone, else none."""
    notice = _notice()
    both = carried(notice, _chain(1000), _image(1000))
    assert both.director_metadata is not None and both.image_metadata is not None
    director_only = carried(notice, _chain(4000), _image(2000))  # 12,000 + 6,000 chars: not both
    assert director_only.director_metadata is not None and director_only.image_metadata is None
    image_only = carried(notice, _chain(6000), _image(1000))  # the Director's 18,000 chars never fit
    assert image_only.director_metadata is None and image_only.image_metadata is not None
    assert carried(notice, _chain(6000), _image(6000)) is notice
    assert carried(notice, None, None) is notice
    for message in (both, director_only, image_only):
        assert len(encode(message)) <= MAX_MESSAGE_BYTES
        assert message.model_copy(update={"director_metadata": None, "image_metadata": None}) == notice
