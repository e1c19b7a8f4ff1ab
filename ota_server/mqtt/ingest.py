"""Status-report ingest: cars' MQTT status messages (and version manifests) in, batched and idempotent
database writes out.

Parsing and the checks that need no database happen at once in :meth:`Ingestor.submit`,
so a malformed message never reaches the queue. One worker drains the queue in
batches and applies each batch in one transaction; per (campaign, VIN) the
current state only moves forward by the report's progress key ``(attempt,
deferrals, state.rank)``, and only by a move the per-VIN state machine
(:mod:`ota_server.domain.states`) allows a car; each ``(campaign, vin, attempt,
deferrals, state)`` is recorded once, so QoS 1 duplicates and out-of-order
delivery never double count, while every deferral is its own event. After each
batch the ``after_batch`` hook (the scheduler) re-judges the campaigns it touched.

Every status report must be signed by its car's registered key (``ota vehicles
provision``) and carry the nonce of the car's current campaign notice. An unsigned
report is dropped in :meth:`Ingestor.submit`; the key and signature are checked in
the batch, against keys loaded with one query, before anything else reads the report.

A report batch (``kind: status_batch``, :class:`~firmware_bundles.messages.ReportBatch`) is a car's
consecutive steps in one message under one signature. It is checked once, as a report is (the same
rejection reasons; one that fails is one rejected message and stores none of its steps), charges the
car's token bucket one token per new step (:meth:`Budgets.spend_car`), and then each step goes through
exactly what a lone report goes through, in the order given, with the message's ``received_at``.
A batch may carry the car's version manifest (the agent's install manifest rides with the
remedied step): covered by the batch's signature, charged one more token, and applied after the
steps exactly as a manifest that came alone.

A version manifest (``kind: manifest``) on a car's status topic is checked the same way (the
VIN in the message is the topic's, signed by that car's key) and applied in the same batch and
transaction by :func:`ota_server.services.inventory.apply_manifests`, which refuses one whose
counter is not above the car's last accepted (``manifest_replayed``). Every verified report or
manifest that adds to the record moves its car's ``last_seen``.

A car pays only for what its message adds to the record (:func:`_fresh`): a replay of its old
signed message, or a QoS 1 duplicate, is still read and counted as a duplicate but is paid for
out of the topic's keyed-junk budget, like junk that copies the car's key id, and moves nothing,
not even ``last_seen``. Charged to the car, a captured 32-step batch replayed a few times a
second kept the car's bucket in debt and its genuine reports were cut as ``flood``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple, cast

from sqlalchemy import Table, and_, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from firmware_bundles import topics
from firmware_bundles.errors import MalformedMessage, UnverifiedReport
from firmware_bundles.messages import (
    Presence,
    ReportBatch,
    ReportState,
    StatusReport,
    VersionManifest,
    parse_presence,
    parse_status_message,
)
from firmware_bundles.report_signing import public_key, verify_report
from ota_server.clock import Clock
from ota_server.db.models import Campaign, CampaignVehicle, RecallRelease, Release, Vehicle
from ota_server.db.update_rows import update_rows
from ota_server.domain.states import Cause, VinState, allowed
from ota_server.infra.ratelimit import TokenBuckets
from ota_server.infra.tasks import stop_task
from ota_server.mqtt import known_steps
from ota_server.rollout import transitions
from ota_server.schemas import IngestStats
from ota_server.services import inventory

log = logging.getLogger(__name__)

_CHUNK = 500
QUEUE_LIMIT = 200_000
_MAX_VIN_BUCKETS = 500_000  # cars' flood buckets remembered (least recently heard dropped first)

# Rejection reasons, as they appear in GET /api/v1/stats/ingest.
MALFORMED = "malformed"
UNKNOWN_TOPIC = "unknown_topic"
TOPIC_VIN_MISMATCH = "topic_vin_mismatch"
UNKNOWN_CAMPAIGN_VEHICLE = "unknown_campaign_vehicle"
WRONG_NONCE = "wrong_nonce"
MISSING_SIGNATURE = "missing_signature"
BAD_SIGNATURE = "bad_signature"
NOT_PROVISIONED = "vehicle_not_provisioned"
KEY_OF_ANOTHER_VEHICLE = "key_of_another_vehicle"
UNKNOWN_KEY = "unknown_key"
REMEDIED_WITHOUT_EVIDENCE = "remedied_without_evidence"
MANIFEST_REPLAYED = "manifest_replayed"  # a manifest's counter not above the car's last accepted one
OVERLOADED = "overloaded"
STORE_FAILED = "store_failed"
OVERSIZED = "oversized"  # over the byte cap: refused before parsing
FLOOD = "flood"  # a car's genuine reports past its token bucket: one noisy car cannot crowd the others out
JUNK_FLOOD = "junk_flood"  # past the junk budget of its topic or of all topics: dropped unread
# What says a message is not a car's genuine report: it spends the junk budgets, never the car's.
JUNK = frozenset(
    {
        OVERSIZED,
        MALFORMED,
        UNKNOWN_TOPIC,
        TOPIC_VIN_MISMATCH,
        MISSING_SIGNATURE,
        BAD_SIGNATURE,
        NOT_PROVISIONED,
        KEY_OF_ANOTHER_VEHICLE,
        UNKNOWN_KEY,
        JUNK_FLOOD,
    }
)
_MAX_JUNK_TOPICS = 100_000  # topics' junk buckets remembered

Ack = Callable[[], None]


# A signed message on a car's status topic.
Signed = StatusReport | ReportBatch | VersionManifest


@dataclass(frozen=True)
class Received:
    message: Signed | Presence
    received_at: datetime
    # Tells the broker the message is safe (the link's manual PUBACK); called once stored.
    ack: Ack | None = None


@dataclass
class Outcome:
    """What one batch did; counted on the event loop, never from the worker thread."""

    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    moved: set[int] = field(default_factory=set)  # campaigns where a car changed state
    sent_at: list[datetime] = field(default_factory=list)  # of the reports stored, for the lag metric
    lags: list[float] = field(default_factory=list)  # seconds from each one's sent_at to the commit
    manifests: int = 0  # version manifests accepted
    discrepancies: Counter[str] = field(default_factory=Counter)  # new ones, by kind
    versions_changed: bool = False  # a manifest brought a version new to the record (see inventory)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _has_evidence(report: StatusReport, release_versions: Collection[str]) -> bool:
    """A car is remedied only once it booted the new software and its health check passed.

    A multi-ECU recall's car names one of its updated ECUs: its version is one of the recall's releases.
    """
    return report.health_ok is True and report.installed_version in release_versions


class _Batch:
    """The database view one batch needs, loaded with a handful of queries.

    ``reports`` are the steps (lone reports and those of report batches), ``signed`` every
    signed message (lone reports, report batches, manifests): the keys are looked up for them.
    """

    def __init__(self, session: Session, reports: Sequence[StatusReport], signed: Sequence[Signed] = ()) -> None:
        campaign_ids = sorted({r.campaign_id for r in reports})
        vins = sorted({r.vin for r in reports})
        wanted = {(r.campaign_id, r.vin) for r in reports}
        wanted_campaigns = set(campaign_ids)
        # Plain rows, not ORM objects: moved in memory, written back once per car (transitions).
        self.rows: dict[tuple[int, str], transitions.CarRow] = {}
        self.steps: set[known_steps.Step] = set()
        for chunk in _chunks(vins):
            # Row locks in one stable order (VIN, campaign) on PostgreSQL (SQLite ignores them and
            # serialises writers anyway): two replicas holding reports of the same car, e.g. a QoS 1
            # duplicate handed to each, apply them one after the other, and the second reads the
            # first's state and events (read committed) instead of overwriting them.
            where = and_(CampaignVehicle.campaign_id.in_(campaign_ids), CampaignVehicle.vin.in_(chunk))
            for row in transitions.locked_car_rows(session, where):
                if (row.campaign_id, row.vin) in wanted:
                    self.rows[(row.campaign_id, row.vin)] = row
            # By VIN alone, each on its index (known_steps), and the campaigns picked here: with the
            # campaign in the WHERE too, PostgreSQL (a fresh campaign has no statistics) scanned every
            # event of the campaign per batch and matched each against the VIN list, quadratic in the fleet.
            steps = known_steps.stored_steps(session, chunk)
            self.steps.update((c, v, a, d, s) for c, v, a, d, s in steps if c in wanted_campaigns)
        self.keys: dict[str, tuple[str, dict[str, object]]] = {}
        self.decommissioned: set[str] = set()  # out of the fleet: its reports are kept, they move nothing
        # The counter of each car's last accepted manifest (and of those newer in this batch):
        # a manifest not above it adds nothing to the record (see _fresh).
        self.manifest_counters: dict[str, int] = {}
        for chunk in _chunks(sorted({*vins, *(m.vin for m in signed)})):
            # By VIN alone, on its unique index; unkeyed cars are skipped here. With
            # ``report_keyid IS NOT NULL`` in the WHERE, PostgreSQL (statistics taken at registration,
            # before any key: null_frac 1) walked ix_vehicles_report_keyid over every provisioned car
            # per batch and filtered by VIN: ~130 ms a batch at 5,000 cars, growing with the fleet.
            rows = session.execute(
                select(
                    Vehicle.vin,
                    Vehicle.report_keyid,
                    Vehicle.report_key,
                    Vehicle.decommissioned_at,
                    Vehicle.manifest_counter,
                ).where(Vehicle.vin.in_(chunk))
            )
            for vin, keyid, key, gone, counter in rows:
                if keyid is None:
                    continue
                if counter is not None:
                    self.manifest_counters[vin] = counter
                if keyid and key:
                    self.keys[vin] = (keyid, key)
                if gone is not None:
                    self.decommissioned.add(vin)
        # Only under attack (or after re-provisioning): whose key was it?
        strangers = sorted(
            {
                r.signature.keyid
                for r in signed
                if r.signature is not None and r.signature.keyid != self.keys.get(r.vin, ("", {}))[0]
            }
        )
        self.key_owners: dict[str, str] = {}
        for chunk in _chunks(strangers):
            owners = session.execute(select(Vehicle.report_keyid, Vehicle.vin).where(Vehicle.report_keyid.in_(chunk)))
            self.key_owners.update((keyid, vin) for keyid, vin in owners if keyid)
        # The versions a remedied car may name: its campaign's release, and a multi-ECU recall's others.
        further = aliased(Release)
        self.release_versions: dict[int, set[str]] = {}
        for campaign_id, version, other in session.execute(
            select(Campaign.id, Release.version, further.version)
            .join(Release, Release.id == Campaign.release_id)
            .outerjoin(RecallRelease, and_(RecallRelease.recall_id == Campaign.recall_id, Campaign.kind == "remedy"))
            .outerjoin(further, further.id == RecallRelease.release_id)
            .where(Campaign.id.in_(campaign_ids))
        ):
            self.release_versions.setdefault(campaign_id, {version}).update([other] if other else [])


def _signature_problem(batch: _Batch, report: Signed) -> str | None:
    """Why ``report`` is not signed by its car's registered key, or None when it is."""
    registered = batch.keys.get(report.vin)
    if registered is None:
        return NOT_PROVISIONED
    keyid, key = registered
    if report.signature is None:
        return MISSING_SIGNATURE
    if report.signature.keyid != keyid:
        return KEY_OF_ANOTHER_VEHICLE if report.signature.keyid in batch.key_owners else UNKNOWN_KEY
    try:
        verify_report(report, public_key(keyid, key))
    except (UnverifiedReport, ValueError):
        return BAD_SIGNATURE
    return None


class Budgets:
    """Who pays for a message: the car once its signature proves the report genuine, junk otherwise.

    A car's bucket (keyed by VIN) is spent only by its verified reports, so junk on its
    topic, which anyone on an open broker can publish, never uses up its allowance. Junk
    spends two buckets of its own, one per topic and one for all topics; while its topic's is
    empty, or the shared one is and the topic sent junk lately, :meth:`Ingestor.submit` drops
    the topic's messages before parsing, which bounds the parsing and signature checks junk
    can cost. The per-topic bucket keeps one junk-spewing topic from emptying the shared one;
    a topic without junk of late is never gated, so junk cannot silence the clean cars. Past a
    closed gate, a message that names the car's registered key (a byte search) is still read,
    so only junk that copies the car's key id can cut it, and that junk has its own budget.
    """

    def __init__(
        self, clock: Clock, *, car: tuple[float, int], junk: tuple[float, int], junk_total: tuple[float, int]
    ) -> None:
        self.car = TokenBuckets(car[0], car[1], clock, max_keys=_MAX_VIN_BUCKETS)
        self.junk = TokenBuckets(junk[0], junk[1], clock, max_keys=_MAX_JUNK_TOPICS)
        self.junk_total = TokenBuckets(junk_total[0], junk_total[1], clock)
        # Junk that names the car's own key (copied from its messages) costs a signature check
        # each: its own per-topic budget, the same size as the topic's.
        self.keyed_junk = TokenBuckets(junk[0], junk[1], clock, max_keys=_MAX_JUNK_TOPICS)
        self._keyids: OrderedDict[str, bytes] = OrderedDict()  # VIN -> its registered key id, quoted
        self._lock = threading.Lock()

    def learn_key(self, vin: str, keyid: str) -> None:
        """Remember ``vin``'s registered report key id (from a batch's key lookup)."""
        with self._lock:
            self._keyids[vin] = f'"{keyid}"'.encode()
            self._keyids.move_to_end(vin)
            while len(self._keyids) > _MAX_VIN_BUCKETS:
                self._keyids.popitem(last=False)

    def names_cars_key(self, vin: str, payload: bytes) -> bool:
        """Whether ``payload`` names ``vin``'s registered key, or any key while that is not known yet
        (a byte search, no parsing)."""
        with self._lock:
            marker = self._keyids.get(vin)
        return (marker if marker is not None else b'"keyid"') in payload

    def past_the_gate(self, topic: str, vin: str, payload: bytes) -> bool:
        """Under a closed junk gate, a status message naming the car's key is still read while the
        junk that names it too has budget left: flooding the topic with anything else silences no car."""
        return self.names_cars_key(vin, payload) and not self.keyed_junk.empty(topic)

    def junk_gate_closed(self, topic: str) -> bool:
        """Whether ``topic``'s messages are dropped unread: its own junk budget is spent, or the
        shared one is and this topic sent junk lately. A topic with no junk of late is never
        gated, so junk sprayed elsewhere cannot silence the cars that send none."""
        if self.junk.empty(topic):
            return True
        return self.junk_total.empty(None) and self.junk.spent(topic)

    def spend_junk(self, topic: str, *, keyed: bool = False) -> None:
        self.junk.wait_for(topic)
        self.junk_total.wait_for(None)
        if keyed:
            self.keyed_junk.wait_for(topic)

    def spend_car(self, key: object, steps: int = 1) -> bool:
        """Spend the car's tokens for a verified message of ``steps`` steps; False when it had none left (a flood).

        A report batch pays one token per new step, so batching is no flood amplifier: a car's
        steps per second stay bounded by its rate whether they come alone or 32 at a time. It
        needs one whole token to go through and may leave the bucket in debt
        (:meth:`TokenBuckets.wait_for`): the car's next messages are then cut (``flood``) until
        the refill has paid for every step, while a genuine batch larger than the burst is
        never refused for good.
        """
        return self.car.wait_for(key, float(steps)) == 0.0


class _Verdict(NamedTuple):
    """What checking and charging a signed message found: why it is refused (None: it is not),
    and how much it adds to the record (0: a replay or a duplicate, see :func:`_fresh`)."""

    problem: str | None
    fresh: int = 0


def _paid(batch: _Batch, report: Signed, budgets: Budgets) -> _Verdict:
    """Check the signature and charge the right budget: the car for what is new, junk for the rest."""
    registered = batch.keys.get(report.vin)
    if registered is not None:
        budgets.learn_key(report.vin, registered[0])
    problem = _signature_problem(batch, report)
    if problem is not None:
        # junk that could pass a closed gate: it names the car's key, or the car has none to name
        keyed = registered is None or (report.signature is not None and report.signature.keyid == registered[0])
        budgets.spend_junk(topics.status_topic(report.vin), keyed=keyed)
        if isinstance(report, VersionManifest):
            what = f"manifest {report.counter}"
        elif isinstance(report, ReportBatch):
            what = f"report batch of {len(report.reports)} steps"
        else:
            what = f"report for campaign {report.campaign_id}"
        log.warning(
            "rejected %s from %s (%s), signed by %s",
            what,
            report.vin,
            problem,
            report.signature.keyid if report.signature else "nobody",
            extra={"vin": report.vin},
        )
        return _Verdict(problem)
    fresh = _fresh(batch, report)
    if fresh == 0:  # a replay or a duplicate: its copier pays, as for junk that names the car's key
        budgets.spend_junk(topics.status_topic(report.vin), keyed=True)
        return _Verdict(None)
    # a batch pays for each new step and for a new manifest it carries, as if each had come alone
    return _Verdict(None if budgets.spend_car(report.vin, fresh) else FLOOD, fresh)


def _fresh(batch: _Batch, message: Signed) -> int:
    """How much ``message`` would add to the record: its steps not stored yet (nor refused for a
    nonce that is not the car's current one), and its manifest if its counter is above the car's
    last. Nothing for a replay or a QoS 1 duplicate: anyone can publish a car's old signed
    message again, so charging its copies to the car would let them silence it."""
    fresh = 0
    manifest = message.manifest if isinstance(message, ReportBatch) else message
    if isinstance(manifest, VersionManifest) and manifest.counter > batch.manifest_counters.get(manifest.vin, -1):
        batch.manifest_counters[manifest.vin] = manifest.counter  # a second copy in this batch adds nothing
        fresh += 1
    new_steps: set[known_steps.Step] = set()
    for report in _steps(message):
        key = known_steps.step_of(report)
        row = batch.rows.get((report.campaign_id, report.vin))
        if key not in batch.steps and row is not None and secrets.compare_digest(row.nonce, report.nonce):
            new_steps.add(key)
    return fresh + len(new_steps)


def _apply_status_reports(
    session: Session,
    reports: Sequence[Received],
    outcome: Outcome,
    budgets: Budgets,
    charged: dict[int, _Verdict],
    now: datetime,
) -> None:
    """Apply ``reports``, report batches and version manifests; ``charged`` keeps each message's
    verdict across retries, so none pays twice. Every verified message moves its car's
    ``last_seen`` (once per message, however many steps it carries); the manifests' counters and
    the inventory are :mod:`ota_server.services.inventory`'s."""
    if not reports:
        return
    manifests = [r for r in reports if isinstance(r.message, VersionManifest)]
    reports = [r for r in reports if isinstance(r.message, StatusReport | ReportBatch)]
    batch = _Batch(
        session,
        [step for r in reports for step in _steps(r.message)],
        [r.message for r in (*reports, *manifests) if not isinstance(r.message, Presence)],
    )
    verified: list[tuple[VersionManifest, datetime]] = []
    for item in manifests:
        assert isinstance(item.message, VersionManifest)
        if id(item) not in charged:
            charged[id(item)] = _paid(batch, item.message, budgets)
        if (problem := charged[id(item)].problem) is not None:
            outcome.rejected[problem] += 1
        else:
            verified.append((item.message, item.received_at))
    seen: dict[str, datetime] = {}
    events: list[dict[str, object]] = []
    for item in reports:
        message = item.message
        assert isinstance(message, StatusReport | ReportBatch)
        if id(item) not in charged:
            charged[id(item)] = _paid(batch, message, budgets)
        problem, fresh = charged[id(item)]
        if problem is not None:  # a batch's signature or bucket refuses the message, all its steps
            outcome.rejected[problem] += 1
            continue
        if fresh:  # a replay says nothing of the car now: its last_seen stays
            seen[message.vin] = max(item.received_at, seen.get(message.vin, item.received_at))
        for report in _steps(message):
            _apply_step(batch, report, item.received_at, outcome, events)
        if isinstance(message, ReportBatch) and message.manifest is not None:  # after its steps, as if alone
            verified.append((message.manifest, item.received_at))
    transitions.write_car_rows(session, batch.rows.values())
    transitions.record_car_events(session, events)
    found = inventory.apply_manifests(session, verified, now, seen)  # takes its cars' last_seen along
    _saw(session, seen)
    outcome.manifests += found.accepted
    outcome.duplicates += found.duplicates
    if found.replayed:
        outcome.rejected[MANIFEST_REPLAYED] += found.replayed
    outcome.discrepancies.update(found.discrepancies)
    outcome.moved.update(found.moved)
    outcome.versions_changed |= found.versions_changed


def _steps(message: Signed | Presence) -> Sequence[StatusReport]:
    """A message's steps: a lone report's one, a report batch's in the order given."""
    if isinstance(message, ReportBatch):
        return message.reports
    return (message,) if isinstance(message, StatusReport) else ()


def _apply_step(
    batch: _Batch, report: StatusReport, received_at: datetime, outcome: Outcome, events: list[dict[str, object]]
) -> None:
    """One verified step, alone or from a report batch: its checks, its event, the car's move."""
    cv = batch.rows.get((report.campaign_id, report.vin))
    if cv is None:
        outcome.rejected[UNKNOWN_CAMPAIGN_VEHICLE] += 1
        return
    if not secrets.compare_digest(cv.nonce, report.nonce):
        outcome.rejected[WRONG_NONCE] += 1
        log.warning(
            "rejected report from %s for campaign %d: not the current nonce",
            report.vin,
            cv.campaign_id,
            extra={"campaign_id": cv.campaign_id, "vin": report.vin},
        )
        return
    if report.state is ReportState.REMEDIED and not _has_evidence(report, batch.release_versions[cv.campaign_id]):
        outcome.rejected[REMEDIED_WITHOUT_EVIDENCE] += 1
        return
    step = known_steps.step_of(report)
    reason = report.reason.value if report.reason else None
    detail = report.detail or None
    if step in batch.steps:
        outcome.duplicates += 1
    else:
        batch.steps.add(step)
        events.append(
            {
                "campaign_id": report.campaign_id,
                "vin": report.vin,
                "attempt": report.attempt,
                "deferrals": report.deferrals,
                "state": report.state.value,
                "reason": reason,
                "detail": detail,
                "received_at": received_at,
            }
        )
        outcome.accepted += 1
        outcome.sent_at.append(report.sent_at)
    # Strictly forward only (a terminal state has the top rank, so nothing of the same
    # attempt moves past it), and only by a move a car may make: an operator's record or
    # a dealer remedy is never undone by a report. A duplicate may still move a car that
    # a retry set back to pending (the stuck car carries on with the new nonce).
    # A decommissioned car stays where decommissioning put it (unreachable, with its reason):
    # back in flight, it would time out and be notified again.
    if (
        report.progress > (cv.attempt, cv.deferrals, cv.progress_rank)
        and report.vin not in batch.decommissioned
        and allowed(
            VinState(cv.state), VinState(report.state.value), Cause.CAR, new_attempt=report.attempt > cv.attempt
        )
    ):
        transitions.by_car_report(
            cv,
            report.state,
            attempt=report.attempt,
            deferrals=report.deferrals,
            reason=reason,
            detail=detail,
            ecu_serial=report.ecu_serial,
            at=received_at,
        )
        outcome.moved.add(cv.campaign_id)
    elif report.progress > (cv.attempt, cv.deferrals, cv.progress_rank) and cv.state == report.state.value:
        transitions.confirmed_by_car(cv, report.state, deferrals=report.deferrals)  # e.g. withdrawn, confirmed


_VEHICLES = cast(Table, Vehicle.__table__)


def _saw(session: Session, seen: dict[str, datetime]) -> None:
    """``last_seen`` moves on every verified report that adds to the record (never back: an older
    one leaves it). One statement for the batch on PostgreSQL (:mod:`ota_server.db.update_rows`)."""
    update_rows(
        session,
        _VEHICLES,
        [{"vin": vin, "last_seen": seen[vin]} for vin in sorted(seen)],
        key=("vin",),
        only_if=lambda table, given: or_(table.c.last_seen.is_(None), table.c.last_seen < given("last_seen")),
    )


def _acknowledge(batch: Sequence[Received]) -> None:
    for item in batch:
        if item.ack is not None:
            try:
                item.ack()
            except Exception:  # a closed session: the broker sends it again, as a duplicate
                log.debug("acknowledging a message failed", exc_info=True)


def _is_race(exc: OperationalError) -> bool:
    """A deadlock or serialization failure with another writer (PostgreSQL SQLSTATE 40P01/40001)."""
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _lags(sent: Sequence[datetime], committed: datetime) -> list[float]:
    """Seconds from each ``sent_at`` to ``committed``; a naive timestamp is taken as UTC."""
    return [(committed - (t if t.tzinfo else t.replace(tzinfo=UTC))).total_seconds() for t in sent]


def _apply_presence(session: Session, items: Sequence[Received]) -> None:
    latest: dict[str, tuple[bool, datetime]] = {}
    for item in items:
        assert isinstance(item.message, Presence)
        latest[item.message.vin] = (item.message.online, item.received_at)
    for online in (True, False):
        vins = [vin for vin, (flag, _) in latest.items() if flag is online]
        if not vins:
            continue
        seen = max(latest[vin][1] for vin in vins)
        for chunk in _chunks(vins):
            session.execute(update(Vehicle).where(Vehicle.vin.in_(chunk)).values(online=online, last_seen=seen))


class Ingestor:
    """Queue plus one batching worker; :meth:`stop` drains what is queued before returning."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        clock: Clock,
        *,
        batch_size: int = 500,
        batch_wait_s: float = 0.05,
        after_batch: Callable[[set[int]], Awaitable[None]] | None = None,
        max_payload_bytes: int = 16 * 1024,
        vin_rate_per_s: float = 0.0,
        vin_burst: int = 100,
        junk_rate_per_s: float = 0.0,
        junk_burst: int = 500,
        junk_total_rate_per_s: float = 0.0,
        junk_total_burst: int = 10_000,
    ) -> None:
        self._factory = session_factory
        self._max_payload_bytes = max_payload_bytes
        self.budgets = Budgets(
            clock,
            car=(vin_rate_per_s, vin_burst),
            junk=(junk_rate_per_s, junk_burst),
            junk_total=(junk_total_rate_per_s, junk_total_burst),
        )
        self._closing = False  # set by stop(): a batch waiting for the database gives up
        self._clock = clock
        self._batch_size = batch_size
        self._batch_wait_s = batch_wait_s
        self._queue: asyncio.Queue[Received] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._worker: asyncio.Task[None] | None = None
        # Called on the event loop with the campaigns a batch moved, before flush() returns.
        self.after_batch = after_batch
        # Called on the event loop with each stored report's seconds from sent_at to commit.
        self.on_lags: Callable[[list[float]], None] | None = None
        self._accepted = 0
        self._duplicates = 0
        self._rejected: Counter[str] = Counter()
        self._manifests = 0
        self._discrepancies: Counter[str] = Counter()

    def stats(self) -> IngestStats:
        junk = sum(count for reason, count in self._rejected.items() if reason in JUNK)
        return IngestStats(
            accepted=self._accepted,
            duplicates=self._duplicates,
            rejected=dict(self._rejected),
            junk=junk,
            manifests=self._manifests,
            discrepancies=dict(self._discrepancies),
        )

    def _reject(self, reason: str, topic: str, detail: object) -> None:
        self._rejected[reason] += 1
        if reason in JUNK:
            self.budgets.spend_junk(topic)
        log.warning("rejected message on %s (%s): %s", topic, reason, detail)

    def _past_the_gate(self, topic: str, payload: bytes) -> bool:
        if not topic.endswith("/status"):
            return False
        try:
            return self.budgets.past_the_gate(topic, topics.vin_from_topic(topic), payload)
        except MalformedMessage:
            return False

    def submit(self, topic: str, payload: bytes, ack: Ack | None = None) -> bool:
        """Check and enqueue one MQTT message; never raises.

        True when it was queued: ``ack`` is then called once it is stored (or found a
        duplicate or refused in its batch). False when it was refused here: the caller
        acknowledges it at once. The junk gates, the byte cap and a look at the car's
        token bucket come before any parsing, so a flood of either kind costs almost
        nothing; the car's token itself is spent once its report's signature checks out
        (a report batch's: one per step). A report batch is one message here, as a report is.
        """
        if self.budgets.junk_gate_closed(topic) and not self._past_the_gate(topic, payload):
            self._rejected[JUNK_FLOOD] += 1  # not logged per message: that would be the flood again
            return False
        if len(payload) > self._max_payload_bytes:
            self._reject(OVERSIZED, topic, f"{len(payload)} bytes")
            return False
        try:
            topic_vin = topics.vin_from_topic(topic)
        except MalformedMessage as exc:
            self._reject(MALFORMED, topic, exc)
            return False
        try:
            if topic.endswith("/status"):
                if self.budgets.car.empty(topic_vin):  # only its genuine reports empty it
                    self._rejected[FLOOD] += 1  # not logged per message: that would be the flood again
                    return False
                message: Signed | Presence = parse_status_message(payload)
            elif topic.endswith("/presence"):
                message = parse_presence(payload)
            else:
                self._reject(UNKNOWN_TOPIC, topic, "not a status or presence topic")
                return False
        except MalformedMessage as exc:
            self._reject(MALFORMED, topic, exc)
            return False
        if message.vin != topic_vin:
            self._reject(TOPIC_VIN_MISMATCH, topic, f"payload VIN {message.vin}")
            return False
        if isinstance(message, Signed) and message.signature is None:
            self._reject(MISSING_SIGNATURE, topic, f"{message.kind} message is not signed")
            return False
        if isinstance(message, Presence) and not self.budgets.spend_car((topic_vin, "presence")):
            self._rejected[FLOOD] += 1  # unsigned: presence has a bucket of its own, apart from reports
            return False
        try:
            self._queue.put_nowait(Received(message, self._clock(), ack))
        except asyncio.QueueFull:
            self._reject(OVERLOADED, topic, "ingest queue full")
            return False
        return True

    def apply(self, items: Sequence[Received]) -> Outcome:
        """Apply one batch in one transaction (blocking; the worker runs it in a thread).

        A race with another writer (a unique event stored first, a deadlock) is retried at
        once, three times. While the database is unreachable the batch waits and retries
        with a growing pause (up to 5 s) until it is stored or :meth:`stop` gives up: the
        reports stay unacknowledged meanwhile, so the broker keeps the rest.
        """
        attempt = 0
        pause = 0.2
        charged: dict[int, _Verdict] = {}
        while True:
            attempt += 1
            outcome = Outcome()
            try:
                with self._factory() as session:
                    reports = [i for i in items if isinstance(i.message, Signed)]
                    _apply_status_reports(session, reports, outcome, self.budgets, charged, self._clock())
                    _apply_presence(session, [i for i in items if isinstance(i.message, Presence)])
                    session.commit()
                committed = self._clock()
                outcome.lags = _lags(outcome.sent_at, committed)
                return outcome
            except IntegrityError:
                # Another replica stored some of these steps first: reload and they count as duplicates.
                log.info("ingest batch raced another writer; retrying (%d)", attempt)
                if attempt < 3:
                    continue
            except OperationalError as exc:
                if _is_race(exc) and attempt < 3:
                    log.info("ingest batch deadlocked with another writer; retrying (%d)", attempt)
                    continue
                if not self._closing:
                    log.warning("ingest batch not stored (%s); retrying in %.1fs", _first_line(exc), pause)
                    time.sleep(pause)
                    pause = min(pause * 2, 5.0)
                    continue
            log.error("dropping an ingest batch of %d messages after repeated failures", len(items))
            return Outcome(rejected=Counter({STORE_FAILED: len(items)}))

    def _count(self, outcome: Outcome) -> None:
        self._accepted += outcome.accepted
        self._manifests += outcome.manifests
        self._discrepancies.update(outcome.discrepancies)
        self._duplicates += outcome.duplicates
        self._rejected.update(outcome.rejected)
        if outcome.lags and self.on_lags is not None:
            self.on_lags(outcome.lags)

    async def _next_batch(self) -> list[Received]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._batch_wait_s
        while len(batch) < self._batch_size:
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            remaining = deadline - loop.time()
            if len(batch) >= self._batch_size or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                outcome = await asyncio.to_thread(self.apply, batch)
                self._count(outcome)
                if not outcome.rejected.get(STORE_FAILED):  # stored (or refused for good): tell the broker
                    _acknowledge(batch)
                # a car moved, or now runs other software (a dynamic campaign may take it): tick
                if (outcome.moved or outcome.versions_changed) and self.after_batch is not None:
                    await self._after(outcome.moved)
            except Exception:  # never let one bad batch stop ingest
                log.exception("ingest batch crashed")
                self._rejected[STORE_FAILED] += len(batch)
                _acknowledge(batch)  # a bug, not an outage: a redelivery would crash again
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _after(self, moved: set[int]) -> None:
        assert self.after_batch is not None
        try:
            await self.after_batch(moved)
        except Exception:  # the reports are stored; the scheduler's periodic tick catches up
            log.exception("after-batch hook failed for campaigns %s", sorted(moved))

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="ota-ingest")

    async def flush(self) -> None:
        """Wait until everything submitted so far is stored (or rejected)."""
        await self._queue.join()

    async def stop(self, timeout_s: float = 30.0) -> None:
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.error(
                "ingest queue not drained within %.0fs; %d messages not stored (unacknowledged ones the broker keeps)",
                timeout_s,
                self._queue.qsize(),
            )
        self._closing = True
        await stop_task(self._worker)
        self._worker = None
