"""A notice spliced from its template's encoded fields (issue 19) is byte for byte :func:`encode`'s.

These are the bytes published, and a tick decides from their length whether a car's notice may
carry its chain and the Image repository's files: one byte off and a car's strict parser refuses
its notice, or a notice over ``MAX_MESSAGE_BYTES`` reaches the broker. So they are checked against
the real encoding over any text the fields may hold: quotes, backslashes, control characters,
non-ASCII.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bundles.messages import (
    CARRIED_FILE_CHARS,
    CampaignNotice,
    Contact,
    DirectorMetadata,
    ImageMetadata,
    Network,
    OwnerNotice,
    Preconditions,
    encode,
)
from ota_server.rollout.fleet import Encoded
from ota_server.services.campaign_fleet import NoticeBatch, NoticeBytes, director_json
from ota_server.services.owner_links import OwnerLinks
from tests.ota_server.helpers import vin

TEXT = st.text(min_size=2, max_size=300)  # any Unicode, control characters included
CONTACT = Contact(name="Z\u00e9", phone="0800")
FILES = st.builds(DirectorMetadata, timestamp=TEXT, snapshot=TEXT, targets=TEXT)


def _template(title: str, owner_text: str | None, image: ImageMetadata | None) -> CampaignNotice:
    return CampaignNotice(
        campaign_id=7,
        vin=vin(1),
        nonce="n" * 32,
        recall_number="26V-001",
        title=title,
        repo_url="http://ota.test/repo",
        issued_at=datetime(2026, 12, 5, 12, 0, 7, 123456, tzinfo=UTC),
        preconditions=Preconditions(min_battery_percent=40, large_bundle_networks=(Network.WIFI,)),
        requires_consent=True,
        owner_notice=None
        if owner_text is None
        else OwnerNotice(purpose=owner_text, what_changes=owner_text, contact=CONTACT),
        image_metadata=image,
    )


@settings(max_examples=200, deadline=None)
@given(
    title=st.text(max_size=200),
    owner_text=st.none() | st.text(min_size=1, max_size=200),
    image=st.none() | st.builds(ImageMetadata, timestamp=TEXT, snapshot=TEXT, targets=TEXT),
    serial=st.integers(min_value=1, max_value=999_999),
    nonce=st.text(alphabet="0123456789abcdef-_", min_size=8, max_size=64),
    owner_url=st.none() | st.text(max_size=200),
    director=st.none() | FILES,
)
def test_the_spliced_bytes_are_the_encoded_bytes(
    title: str,
    owner_text: str | None,
    image: ImageMetadata | None,
    serial: int,
    nonce: str,
    owner_url: str | None,
    director: DirectorMetadata | None,
) -> None:
    template = _template(title, owner_text, image)
    update: dict[str, Any] = {"vin": vin(serial), "nonce": nonce}
    if owner_url is not None:
        update["owner_url"] = owner_url
    if director is not None:
        update["director_metadata"] = director
    assert NoticeBytes(template).encode(update) == encode(template.model_copy(update=update))


def test_setting_a_field_to_none_takes_it_out() -> None:
    image = ImageMetadata(timestamp='{"a": "\\u00e9"}', snapshot="ss", targets="tt")
    template = _template("Brake \u00e9", 'Bitte "sofort"\n', image)
    update = {"image_metadata": None, "owner_notice": None}
    assert NoticeBytes(template).encode(update) == encode(template.model_copy(update=update))


def _chain(files: DirectorMetadata) -> dict[str, tuple[int, bytes]]:
    return {f"{name}.json": (1, text.encode()) for name, text in files.model_dump().items()}


@settings(max_examples=200, deadline=None)
@given(files=FILES, owner_url=st.none() | st.text(max_size=200))
def test_a_chain_spliced_as_bytes_is_the_encoded_model(files: DirectorMetadata, owner_url: str | None) -> None:
    """A tick splices each car's chain from its signed bytes (:func:`director_json`), not from a model."""
    template = _template("Brake", None, ImageMetadata(timestamp="it", snapshot="is", targets="tt"))
    update: dict[str, Any] = {"vin": vin(3), "nonce": "n" * 32, "owner_url": owner_url}
    raw = director_json(_chain(files))
    assert raw is not None
    spliced = NoticeBytes(template).encode(update, {"director_metadata": raw})
    assert spliced == encode(template.model_copy(update=update | {"director_metadata": files}))


def test_a_chain_too_large_to_carry_is_not_spliced() -> None:
    big = "x" * (CARRIED_FILE_CHARS + 1)
    assert director_json(_chain(DirectorMetadata.model_construct(timestamp="ts", snapshot="ss", targets=big))) is None
    assert director_json(None) is None
    fits = DirectorMetadata(timestamp="ts", snapshot="ss", targets="x" * CARRIED_FILE_CHARS)
    assert director_json(_chain(fits)) == encode(fits)


def test_a_batch_hands_over_bytes_and_makes_each_message_only_when_asked(monkeypatch: Any) -> None:
    """A launch's notices leave as bytes; the message kept with each (its bookkeeping once the broker took
    it) is made when first asked for, not on the approval's path (issue 19, session 21), and is the
    notice the bytes encode, less the chain (the Director's rows)."""
    image = ImageMetadata(timestamp="it", snapshot="is", targets="tt")
    template = _template("Brake", "Why", image)
    files = DirectorMetadata(timestamp="ts", snapshot="ss", targets="tg")
    cars = [(vin(n), f"{n:032x}") for n in range(1, 4)]
    links = OwnerLinks(b"k" * 32, "https://owners.test")
    batch = NoticeBatch(cars, {vin(1): _chain(files)}, template, image, links, 7)
    copies: list[dict[str, Any]] = []
    copy = CampaignNotice.model_copy

    def counted(self: CampaignNotice, *, update: dict[str, Any] | None = None, deep: bool = False) -> CampaignNotice:
        copies.append(dict(update or {}))
        return copy(self, update=update, deep=deep)

    monkeypatch.setattr(CampaignNotice, "model_copy", counted)
    made = batch.make()
    assert copies == []  # nothing but bytes made for the hand-over
    assert [(m.vin, m.campaign_id) for m in made if isinstance(m, Encoded)] == [(v, 7) for v, _ in cars]
    messages = [sent.message for sent in made if isinstance(sent, Encoded)]
    assert len(copies) == 3  # one per message, when asked for
    assert [sent.message for sent in made if isinstance(sent, Encoded)] == messages and len(copies) == 3  # once
    for sent, message, (car, nonce) in zip(made, messages, cars, strict=True):
        assert isinstance(message, CampaignNotice)
        assert (message.vin, message.nonce, message.owner_url) == (car, nonce, links.url(car, 7))
        assert message.director_metadata is None
        carried = files if car == vin(1) else None
        assert isinstance(sent, Encoded)
        assert sent.payload == encode(message.model_copy(update={"director_metadata": carried}))
