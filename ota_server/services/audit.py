"""The audit log: append-only and hash-chained, one entry per operator action.

Entry N stores ``hash = sha256(hash of entry N-1 + canonical JSON of entry N)``, so
changing, removing or reordering any entry breaks every hash after it; the one-row
``audit_head`` (last seq and hash) also catches entries cut off the end. Appending
first updates that row, which takes the row lock (PostgreSQL) or the write lock
(SQLite), so concurrent writers, threads or replicas, queue instead of forking the
chain.

An action's entry is written by :func:`record_commits` in the same transaction as
the action itself (a ``before_commit`` hook), so nothing is stored without its entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from securesystemslib.formats import encode_canonical
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, UOWTransaction

from ota_server.clock import Clock
from ota_server.db.models import AuditEntry, AuditHead
from ota_server.schemas import AuditEntryPublic, AuditVerification
from ota_server.schemas.listing import Page
from ota_server.services import listing

GENESIS = "0" * 64
HEAD_ID = 1
TRAIL_KEY = "ota_audit_trail"  # session.info key of the session's Trail
MAX_IDS = 20
# New rows worth naming in an entry's target (ids the action created).
_CREATED_TABLES = frozenset({"recalls", "releases", "campaigns", "api_tokens", "launch_requests", "vehicles"})


@dataclass
class Action:
    """Who did what to which ids, and how it ended (an HTTP status)."""

    actor: str
    role: str
    method: str
    route: str
    target: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    detail: str | None = None


def _content(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at.astimezone(UTC).isoformat(),
        "actor": entry.actor,
        "role": entry.role,
        "method": entry.method,
        "route": entry.route,
        "target": entry.target,
        "status": entry.status,
        "detail": entry.detail,
        "prev_hash": entry.prev_hash,
    }


def entry_hash(entry: AuditEntry) -> str:
    canonical = encode_canonical(_content(entry))
    assert isinstance(canonical, str)  # None only when an output function is given
    return hashlib.sha256((entry.prev_hash + canonical).encode()).hexdigest()


def append(session: Session, action: Action, now: datetime) -> AuditEntry:
    """Add the next entry to the session's transaction; the caller commits."""
    # A no-op write first: it locks the head until commit, so the read below is the true head.
    session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=AuditHead.seq))
    seq, prev = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == HEAD_ID)).one()
    entry = AuditEntry(
        seq=seq + 1,
        at=now.astimezone(UTC),
        actor=action.actor,
        role=action.role,
        method=action.method,
        route=action.route,
        target=action.target,
        status=action.status,
        detail=(action.detail or "")[:1000] or None,
        prev_hash=prev,
    )
    entry.hash = entry_hash(entry)
    session.add(entry)
    session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(seq=entry.seq, hash=entry.hash))
    return entry


def record(session: Session, action: Action, now: datetime) -> None:
    """Append and commit on its own (a refused request, a CLI action)."""
    append(session, action, now)
    session.commit()


class Trail:
    """One request's action, written with the first commit of its session (see :func:`record_commits`)."""

    def __init__(self, session: Session, action: Action, clock: Clock) -> None:
        self.session = session
        self.action = action
        self.clock = clock
        self.committed = False
        self._pending = True
        self._in_transaction = False
        self._created: dict[str, list[Any]] = {}

    def _after_flush(self, session: Session, _flush: UOWTransaction) -> None:
        for obj in session.new:
            table = getattr(obj, "__tablename__", "")
            if self._pending and table in _CREATED_TABLES:
                ids = self._created.setdefault(table, [])
                if len(ids) < MAX_IDS:
                    ids.append(getattr(obj, "id", None))

    def _before_commit(self, session: Session) -> None:
        if not self._pending:
            return
        session.flush()  # assigns the ids of what the action created
        if self._created:
            self.action.target = {**self.action.target, "created": self._created}
        self._pending = False
        self._in_transaction = True
        append(session, self.action, self.clock())

    def _after_commit(self, _session: Session) -> None:
        if self._in_transaction:
            self.committed = True
            self._in_transaction = False

    def _after_rollback(self, _session: Session) -> None:
        if self._in_transaction:  # the action and its entry were rolled back together
            self._in_transaction = False

    def finish(self) -> None:
        """The request succeeded: if it stored nothing (an idempotent repeat), record it on its own."""
        if self._pending:
            self._pending = False
            record(self.session, self.action, self.clock())
            self.committed = True

    def fail(self, status: int, detail: str) -> None:
        """The request failed: roll back whatever it did and record the refusal instead."""
        self._pending = False
        self.session.rollback()
        if self.committed:
            return  # the action itself was stored (and audited) before the failure
        self.action.status = status
        self.action.detail = detail
        record(self.session, self.action, self.clock())
        self.committed = True


def record_commits(session: Session, action: Action, clock: Clock) -> Trail:
    """Write ``action``'s audit entry in the same transaction as the session's first commit."""
    trail = Trail(session, action, clock)
    session.info[TRAIL_KEY] = trail
    event.listen(session, "after_flush", trail._after_flush)
    event.listen(session, "before_commit", trail._before_commit)
    event.listen(session, "after_commit", trail._after_commit)
    event.listen(session, "after_rollback", trail._after_rollback)
    return trail


def note(session: Session, **facts: Any) -> None:
    """Add ``facts`` to the target of the action ``session`` is audited for (none: nothing).

    For what a service learns that the route cannot see, e.g. who created the tokens of
    the two persons behind a launch; a refusal's entry carries them too.
    """
    trail = session.info.get(TRAIL_KEY)
    if isinstance(trail, Trail):
        trail.action.target = {**trail.action.target, **facts}


def _public(entry: AuditEntry) -> AuditEntryPublic:
    return AuditEntryPublic.model_validate(entry)


LISTING = listing.by_id("audit", AuditEntry.seq, at=listing.column(AuditEntry.at, datetime))


@dataclass(frozen=True)
class AuditFilter:
    """``route`` matches the start of the route (``/api/v1/recalls`` takes every recall route)."""

    actor: str | None = None
    route: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def page(
    session: Session, spec: AuditFilter, sort: str | None, cursor: str | None, limit: int
) -> Page[AuditEntryPublic]:
    """Entries by actor, route and time (``since`` inclusive, ``until`` exclusive), oldest first by default."""
    query = select(AuditEntry)
    if spec.actor is not None:
        query = query.where(AuditEntry.actor == spec.actor)
    if spec.route is not None:
        query = query.where(AuditEntry.route.startswith(spec.route, autoescape=True))
    if spec.since is not None:
        query = query.where(AuditEntry.at >= _utc(spec.since))
    if spec.until is not None:
        query = query.where(AuditEntry.at < _utc(spec.until))
    rows, next_cursor = listing.page(session, query, LISTING, sort, cursor, limit)
    return Page[AuditEntryPublic](items=[_public(e) for e in rows], next_cursor=next_cursor)


def export_lines(session: Session, batch: int = 500) -> Iterator[str]:
    """Every entry as one JSON line, oldest first (what ``GET /api/v1/audit/export`` streams)."""
    last = 0
    while True:
        rows = list(
            session.scalars(select(AuditEntry).where(AuditEntry.seq > last).order_by(AuditEntry.seq).limit(batch))
        )
        if not rows:
            return
        for entry in rows:
            yield _public(entry).model_dump_json() + "\n"
        last = rows[-1].seq


def verify(session: Session) -> AuditVerification:
    """Recompute the chain from the first entry; name the first entry that does not fit."""
    prev_hash, expected_seq, checked = GENESIS, 1, 0
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).yield_per(500):
        problem = None
        if entry.seq != expected_seq:
            problem = f"entry {expected_seq} is missing (next stored entry is {entry.seq})"
        elif entry.prev_hash != prev_hash:
            problem = f"entry {entry.seq}: prev_hash does not match entry {entry.seq - 1}'s hash"
        elif entry_hash(entry) != entry.hash:
            problem = f"entry {entry.seq}: its content does not match its hash (altered)"
        if problem:
            return AuditVerification(
                ok=False, entries=checked, head_hash=prev_hash, first_bad=entry.seq, problem=problem
            )
        prev_hash, expected_seq, checked = entry.hash, entry.seq + 1, checked + 1
    head = session.get(AuditHead, HEAD_ID)
    if head is None or (head.seq, head.hash) != (checked, prev_hash):
        problem = f"the chain ends at entry {checked} but the head records entry {head.seq if head else '?'}"
        return AuditVerification(ok=False, entries=checked, head_hash=prev_hash, first_bad=checked + 1, problem=problem)
    return AuditVerification(ok=True, entries=checked, head_hash=prev_hash, first_bad=None, problem=None)
