"""The services' side of the campaign engine's port (:class:`ota_server.rollout.fleet.Fleet`).

Who matches a dynamic recall now (its late joiners), which image each affected ECU of a car
is assigned (queued for the Director, with the recall's floors) and the notice each car is
sent. The coordinator calls these during a tick; it never imports this module (the server's
wiring hands it over).

With ``carry_metadata`` each car's Director chain is signed in the tick that notifies it (in
the tick's transaction, stored as the first timestamp request would store it) and its three
signed files ride in the notice, so the car need not fetch them; a notice that would pass
``MAX_MESSAGE_BYTES`` goes without them. :meth:`CampaignFleet.assign` keeps what it signed for
the :meth:`CampaignFleet.notice_maker` call that follows it in the same tick, and returns the
chains' writing, which the tick does while the notices are made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_json
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tuf.api.metadata import TargetFile

from firmware_bundles.messages import (
    CARRIED_FILE_CHARS,
    MAX_MESSAGE_BYTES,
    CampaignNotice,
    DirectorMetadata,
    ImageMetadata,
    encode,
)
from firmware_bundles.window import InstallWindow
from ota_server.db.models import Campaign, CampaignVehicle, Ecu, Recall, Release, Vehicle
from ota_server.db.one_of import one_of
from ota_server.domain.rollout_plan import RolloutPlan, not_started, wave_sizes
from ota_server.domain.states import CampaignKind, VinState
from ota_server.errors import Conflict, InvalidInput
from ota_server.rollout import transitions
from ota_server.rollout.fleet import Encoded, Sendable
from ota_server.schemas import Population
from ota_server.services import campaigns, inventory
from ota_server.services import population as populations
from ota_server.services.owner_links import OwnerLinks
from ota_server.services.recalls import release_floor
from ota_server.signing.chains import Chain
from ota_server.signing.director import Director, with_terms
from ota_server.signing.image_repo import target_for

log = logging.getLogger(__name__)
_CHUNK = 500


def _install_windows(session: Session, plan: RolloutPlan, vins: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each car's maintenance window (the plan's windows in its own time zone), signed by the Director
    so the car starts an install only inside one; none when the plan has no windows."""
    if not plan.windows:
        return {}
    zones: dict[str, str | None] = {}
    for start in range(0, len(vins), _CHUNK):
        chunk = vins[start : start + _CHUNK]
        for vin, time_zone in session.execute(select(Vehicle.vin, Vehicle.time_zone).where(one_of(Vehicle.vin, chunk))):
            zones[vin] = time_zone
    shape = [(w.days, w.start, w.end) for w in plan.windows]
    return {vin: InstallWindow.of(zones.get(vin) or plan.default_time_zone, shape).to_json() for vin in vins}


def image_files(read: Callable[[str], bytes]) -> ImageMetadata | None:
    """The Image repository's three files as ``read`` serves them (None: one is missing or too big)."""
    try:
        files = {name: read(f"{name}.json").decode() for name in ("timestamp", "snapshot", "targets")}
    except Exception:  # the notice goes without: the car fetches them
        log.warning("Image metadata not readable for the notices: sent without", exc_info=True)
        return None
    if max(map(len, files.values())) > CARRIED_FILE_CHARS:
        return None
    return ImageMetadata(**files)


_DIRECTOR_FILES = tuple(DirectorMetadata.model_fields)  # in their declared order: as encoded


def _field(name: str, value: bytes) -> bytes:
    return b'"' + name.encode() + b'":' + value  # a field's name is an identifier: nothing to escape


_DIRECTOR_PATHS = tuple((name, f"{name}.json") for name in _DIRECTOR_FILES)
# Each file's key as director_json writes it: the first opens the object, the others follow a comma.
_DIRECTOR_KEYS = tuple((b"," if i else b"{") + _field(name, b"") for i, name in enumerate(_DIRECTOR_FILES))


def _carried_texts(chain: Chain | None) -> dict[str, str] | None:
    """The car's signed Director files as text, when each is within its bound and together they could fit."""
    if chain is None:
        return None
    files = {name: chain[path][1].decode() for name, path in _DIRECTOR_PATHS}
    sizes = [len(text) for text in files.values()]
    if sum(sizes) <= MAX_MESSAGE_BYTES and min(sizes) >= 2 and max(sizes) <= CARRIED_FILE_CHARS:
        return files
    return None


def _director_files(chain: Chain | None) -> DirectorMetadata | None:
    """The car's signed Director files when each is within its bound and together they could fit."""
    files = _carried_texts(chain)
    return None if files is None else DirectorMetadata(**files)


def director_json(chain: Chain | None) -> bytes | None:
    """:func:`_director_files` as a notice's encoded ``director_metadata`` value, byte for byte what
    :func:`encode` writes for it, made without the model (validating and dumping 30,000 of them was
    ~0.3 s of a launch's tick, issue 19); None when :func:`_director_files` is."""
    files = _carried_texts(chain)
    if files is None:
        return None
    parts: list[bytes] = []
    for text, key in zip(files.values(), _DIRECTOR_KEYS, strict=True):
        parts += (key, to_json(text))
    parts.append(b"}")
    return b"".join(parts)


def carried(notice: CampaignNotice, chain: Chain | None, image: ImageMetadata | None = None) -> CampaignNotice:
    """``notice`` with the car's signed Director files and the Image repository's, as many as fit in
    ``MAX_MESSAGE_BYTES``: both, else the Director's alone, else the Image repository's alone, else as it is.

    One copy and one encoding when both fit (a launch's every notice): adding the two in turn made
    two copies and encoded each (issue 19).
    """
    director = _director_files(chain)
    tries: list[dict[str, DirectorMetadata | ImageMetadata]] = []
    if director is not None and image is not None:
        tries.append({"director_metadata": director, "image_metadata": image})
    if director is not None:
        tries.append({"director_metadata": director})
    if image is not None:
        tries.append({"image_metadata": image})
    result = notice
    for update in tries:
        candidate = notice.model_copy(update=update)
        if len(encode(candidate)) <= MAX_MESSAGE_BYTES:
            result = candidate
            break
    if chain is not None and result.director_metadata is None:
        log.info(
            "notice to %s would pass %d bytes with its Director metadata: sent without", notice.vin, MAX_MESSAGE_BYTES
        )
    return result


class NoticeBytes:
    """``template`` with some top-level fields set, encoded exactly as :func:`encode` encodes that copy.

    :func:`encode` writes a notice's fields in their declared order, each ``"name":value``, joined
    by commas, a None field left out. The template's fields are encoded once; each car's notice
    splices in its own (the VIN, nonce, owner link and signed chain), each value by the same
    serializer (``pydantic_core.to_json``; a model by :func:`encode` itself, its None fields left
    out). Exact: ``tests/ota_server/test_notice_size.py`` compares it with :func:`encode` over every
    field a tick sets, with any text. A launch of 30,000 cars measured each notice by encoding its
    chain, then encoded it whole again to publish it (issue 19); now the bytes made here are
    measured and published.
    """

    def __init__(self, template: CampaignNotice) -> None:
        self._names = list(type(template).model_fields)
        self._keys = {name: _field(name, b"") for name in self._names}  # b'"name":', each made once
        dumped = template.model_dump(mode="json", exclude_none=True)
        self._pieces = {name: _field(name, to_json(value)) for name, value in dumped.items()}
        self._layouts: dict[tuple[str, ...], list[tuple[str | None, bytes]]] = {}

    def encode(self, update: Mapping[str, Any], encoded: Mapping[str, bytes] | None = None) -> bytes:
        """The template with ``update``'s values, and ``encoded``'s: values already encoded (as
        :func:`director_json` encodes a chain), spliced in as they are. One join of the pieces, so a
        notice's ~5 KB are copied once (joining each field first copied them three times, issue 19)."""
        raw = {name: value for name, value in encoded.items() if value is not None} if encoded else {}
        parts: list[bytes] = [b"{"]
        for name, piece in self._layout((*update, *raw)):
            if name is not None:
                if (value := raw.get(name)) is None:
                    if (plain := update[name]) is None:
                        continue  # a field set to None is left out, as encode() leaves it
                    value = _json(plain)
                parts += (self._keys[name], value, b",")
            else:
                parts += (piece, b",")
        parts[-1] = b"}" if len(parts) > 1 else b"{}"
        return b"".join(parts)

    def _layout(self, spliced: tuple[str, ...]) -> list[tuple[str | None, bytes]]:
        """The fields in order for notices setting ``spliced``: a name to splice in, or (None, the
        template's fields between, already joined); one per set of names, so a car's notice is a
        join of a few pieces rather than a walk over every field (~0.2 s of 30,000 notices)."""
        if (layout := self._layouts.get(spliced)) is None:
            names = set(spliced)
            layout = []
            fixed: list[bytes] = []
            for name in self._names:
                if name in names:
                    if fixed:
                        layout.append((None, b",".join(fixed)))
                        fixed = []
                    layout.append((name, b""))
                elif (piece := self._pieces.get(name)) is not None:
                    fixed.append(piece)
            if fixed:
                layout.append((None, b",".join(fixed)))
            self._layouts[spliced] = layout
        return layout


def _json(value: Any) -> bytes:
    return encode(value) if isinstance(value, BaseModel) else to_json(value)


@dataclass(frozen=True)
class NoticeBatch:
    """A tick's notices, made from what was read in the tick (no session, no ORM object), so the tick
    may make them in another thread while it writes the chains and marks the cars notified (issue 19)."""

    cars: Sequence[tuple[str, str]]  # (VIN, nonce)
    signed: Mapping[str, Chain]  # each car's chain the tick signed, to carry
    template: CampaignNotice  # the first car's notice, with the Image repository's files
    image: ImageMetadata | None
    owner_links: OwnerLinks | None
    campaign_id: int

    def make(self) -> list[Sendable]:
        """Each car's notice with its signed chain and the Image repository's files, made in one copy of
        the template and encoded once, by splicing (:class:`NoticeBytes`): the bytes published. One that
        would pass ``MAX_MESSAGE_BYTES`` goes through :func:`carried`'s fallbacks (encoded when sent)."""
        template, encoder = self.template, NoticeBytes(self.template)
        made: list[Sendable] = []
        # Copies (made later), not validated again: the VINs were checked at registration, the nonces and
        # links are ours. The message kept with the bytes leaves the chain out: the notice log does (the chain is the
        # Director's rows), and 30,000 decoded chains were ~100 MiB held until the broker took them.
        for vin, nonce in self.cars:
            update: dict[str, Any] = {"vin": vin, "nonce": nonce}
            if self.owner_links is not None:
                update["owner_url"] = self.owner_links.url(vin, self.campaign_id)
            chain = self.signed.get(vin)
            director = director_json(chain)
            payload = encoder.encode(update, None if director is None else {"director_metadata": director})
            if (chain is not None and director is None) or len(payload) > MAX_MESSAGE_BYTES:
                # rare: the fallbacks (each measured by encoding it), and the log of a chain left out
                bare = template.model_copy(update=update | {"image_metadata": None, "director_metadata": None})
                made.append(carried(bare, chain, self.image))
                continue
            made.append(Encoded(template, payload, changes=update))  # the message made when first wanted
        return made


def _nothing_to_write() -> None:
    """The assignment was written as it was made (queued rows)."""


class CampaignFleet:
    def __init__(
        self,
        director: Director,
        repo_url: str,
        owner_links: OwnerLinks | None = None,
        *,
        carry_metadata: bool = False,
        image_metadata: Callable[[str], bytes] | None = None,
    ) -> None:
        """``owner_links``: each car's notice carries its owner-page link (none without).
        ``carry_metadata``: notices carry each car's signed Director files (agents that know the field only).
        ``image_metadata``: reads an Image repository file as served; with ``carry_metadata`` the notices
        carry the three (read once per call, the same for every car) when they still fit."""
        self._director = director
        self._repo_url = repo_url
        self._owner_links = owner_links
        self._carry = carry_metadata
        self._image = image_metadata if carry_metadata else None
        self._signed: dict[str, Chain] = {}  # what the last assign signed, for the notices that follow

    def join_late(self, session: Session, campaign: Campaign, recall: Recall, now: datetime) -> int:
        """A dynamic campaign takes cars that match now and were not in it yet, into its last wave.

        A joiner whose manifests already show the fix on every affected ECU is counted
        ``already_remedied`` as at launch: nothing is sent to it and it is final.
        """
        releases = populations.releases_of(session, recall)
        population = Population.model_validate(recall.population)
        members = {m.vin: m for m in populations.resolve_all(session, population, releases)}
        known = set(session.scalars(select(CampaignVehicle.vin).where(CampaignVehicle.campaign_id == campaign.id)))
        new = sorted(set(members) - known)
        if not new:
            return 0
        campaigns.freeze_ecus(session, campaign.id, [members[vin] for vin in new])
        last_wave = session.scalar(
            select(func.max(CampaignVehicle.wave)).where(CampaignVehicle.campaign_id == campaign.id)
        )
        done = inventory.already_remedied(session, [members[vin] for vin in new])
        transitions.enroll(
            session,
            [
                {
                    "campaign_id": campaign.id,
                    "vin": vin,
                    "nonce": transitions.new_nonce(),
                    "state": VinState.PENDING.value,
                    "reason": None,
                    "detail": None,
                    "progress_rank": -1,
                    "attempt": 0,
                    "updated_at": now,
                    "wave": last_wave or 0,
                    "deferrals": 0,
                    "retries": 0,
                }
                | (inventory.remedied_row(vin) if vin in done else {})
                for vin in new
            ],
        )
        campaign.population += len(new)
        log.info("campaign %d: %d late joiners", campaign.id, len(new))
        return len(new)

    def notice_maker(
        self, recall: Recall, campaign: Campaign, cars: Sequence[tuple[str, str]], now: datetime
    ) -> Callable[[], list[Sendable]]:
        """What the notices of ``cars`` need, read now (the recall, the campaign, the chains the last
        :meth:`assign` signed, the Image repository's files); the batch made when called, without a
        session or an ORM object (:class:`NoticeBatch`)."""
        signed, self._signed = self._signed, {}
        if not cars:
            return list
        image = image_files(self._image) if self._image is not None else None
        first_vin, first_nonce = cars[0]
        template = campaigns.notice(recall, campaign, first_vin, first_nonce, self._repo_url, now)
        if image is not None:
            template = template.model_copy(update={"image_metadata": image})
        return NoticeBatch(cars, signed, template, image, self._owner_links, campaign.id).make

    def assign(
        self, session: Session, campaign: Campaign, recall: Recall, vins: Sequence[str], now: datetime
    ) -> Callable[[], None]:
        """Sign these cars' Director metadata: every affected ECU's fix in one targets metadata, each with its
        floor. Queued rows are written at once; chains signed now are written when the returned call is made
        (the tick's, before it commits), and kept for the notices meanwhile."""
        release = session.get(Release, campaign.release_id)
        assert release is not None
        # Most of the campaign (a launch's first tick): the population read whole, not by 30,000 VINs.
        whole = 2 * len(vins) >= campaign.population
        plan, terms = _plan(session, campaign.kind, release, recall, campaigns.plan_of(recall, campaign), vins, whole)
        # Signed now, straight from the plan (the notices carry it), or queued and signed when each
        # car first asks for its timestamp.
        if self._carry:
            signed = self._director.signed_now(session, plan, now, **terms)
            self._signed = signed.chains

            def write() -> None:
                signed.write(session)

            return write
        self._signed = {}
        self._director.queue(session, plan, now, **terms)
        return _nothing_to_write

    def prepare(self, session: Session, recall: Recall, now: datetime) -> int:
        """Sign ahead the chains the launch of ``recall`` would sign in its first ticks, if the launch
        would notify every car at once (one wave, no rate limit, started): a safety recall waiting for
        its second person (:mod:`ota_server.signing.prepared`). How many; 0 when there is nothing to sign
        ahead (notices without chains, a canary first, a recall that cannot be launched)."""
        rules = campaigns.plan_of(recall)
        if not self._carry or rules.rate is not None or not_started(rules, now):
            return 0
        try:
            release, members = campaigns.launchable(session, recall)
        except (Conflict, InvalidInput):
            return 0
        if wave_sizes(len(members), rules.waves)[0] < len(members):
            return 0
        vins = [m.vin for m in members]
        plan, terms = _plan(session, CampaignKind.REMEDY, release, recall, rules, vins, resolved=members)
        return self._director.prepare(session, with_terms(plan, **terms), now)


def _plan(
    session: Session,
    kind: str,
    release: Release,
    recall: Recall,
    rules: RolloutPlan,
    vins: Sequence[str],
    whole: bool = False,
    resolved: Sequence[populations.Member] | None = None,
) -> tuple[dict[str, dict[str, TargetFile]], dict[str, Any]]:
    """Each car's images by ECU serial, and the terms signed with them (floors, ECU failure policy, windows).

    ``whole``: ``vins`` are most of the population, so it is resolved whole and kept to them (the
    same members: resolving is per car) rather than queried by thousands of VINs. ``resolved``: the
    population as the caller has just resolved it (not resolved again).
    """
    # A rollback campaign's cars run the bad release: every ECU of the hardware id, below.
    rollback = kind == CampaignKind.ROLLBACK
    releases = [release] if rollback else populations.releases_of(session, recall)
    members: dict[str, dict[str, int]] = {}
    if not rollback:
        if resolved is None:
            population = Population.model_validate(recall.population)
            resolved = populations.resolve_all(session, population, releases, None if whole else vins)
        wanted = set(vins)
        members = {m.vin: m.assignments() for m in resolved if m.vin in wanted}
    by_hardware = {r.hardware_id: r.id for r in releases}
    missing = [v for v in vins if v not in members]
    for start in range(0, len(missing), _CHUNK):  # no longer matching the filters (e.g. version moved)
        for vin, serial, hardware_id in session.execute(
            select(Vehicle.vin, Ecu.serial, Ecu.hardware_id)
            .join(Ecu, Ecu.vehicle_id == Vehicle.id)
            .where(one_of(Vehicle.vin, missing[start : start + _CHUNK]), Ecu.hardware_id.in_(by_hardware))
            .where(populations.hardware_confirmed())  # never an ECU whose manifest names other hardware
            .order_by(Vehicle.id, Ecu.primary.desc(), Ecu.id)
        ):
            members.setdefault(vin, {})[serial] = by_hardware[hardware_id]
    images = {r.id: target_for(r) for r in releases}
    floor = release.release_counter if recall.min_release_counter is None else recall.min_release_counter
    floors = {} if rollback else {images[r.id].path: release_floor(recall, r) for r in releases}
    plan = {vin: {serial: images[rid] for serial, rid in members.get(vin, {}).items()} for vin in vins}
    terms: dict[str, Any] = {
        "min_release_counter": floor,
        "floors": floors,
        "ecu_failure_policy": None if rollback else recall.ecu_failure_policy,
        "windows": _install_windows(session, rules, vins),
    }
    return plan, terms
