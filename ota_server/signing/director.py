"""The Director: per-vehicle targets metadata naming exactly what each ECU must install.

One Director root (a root key, one online key) is shared by all cars; each VIN has
its own targets/snapshot/timestamp chain whose versions only grow, so a car's
rollback protection holds across campaigns.

A car's next assignment is queued when it is notified (:meth:`Director.queue`: one
small row, ``assignment.pending.json``) and signed when the car first asks for its
timestamp (:meth:`Director.sign_queued`), so a launch of 30,000 cars publishes its
notices without first signing 90,000 metadata files, and the signing is spread over
the cars' own fetches (with ``OTA_NOTICE_CARRIES_METADATA`` the notifying tick signs them
at once, straight from its plan with no queued row (:meth:`Director.signed_now`), its notices
carrying the chains: ``CampaignFleet.assign``; a plan of 500 cars or more in the signing
processes of :mod:`ota_server.signing.signing_pool`, when the server has them). Cars asking at once
are signed together, in one transaction: their queued rows are locked in VIN order (as
:meth:`Director.queue` locks the ones it replaces), so two replicas' batches wait for
each other instead of deadlocking, and a VIN whose queued row another replica consumed
first is left to be read back. A later queue for the same VIN (a cancel's empty
assignment, the next campaign) replaces the one not yet signed.

An owner's answer given on the owner page is signed into the VIN's targets metadata as
the top-level ``consent`` field (:meth:`Director.sign_consent`, format in
:mod:`firmware_bundles.consent`): the car takes it only from there, and only for the
images the same metadata assigns. A new assignment is signed without it.

A car's maintenance window (the plan's windows in its own time zone) is signed into the
same targets as the top-level ``maintenance_window`` field (format in
:mod:`firmware_bundles.window`): the car starts an install only inside it.

A VIN's chain is re-signed lazily, when its timestamp is served and is within half
its lifetime of expiring (:meth:`Director.refresh`): a chain is read only by a car
working on a campaign, usually soon after the launch signed it, so a periodic job
would re-sign tens of thousands of idle chains for nobody.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, TargetFile, Targets

from firmware_bundles.consent import CONSENT_FIELD, SignedConsent
from firmware_bundles.uptane import (
    Expiry,
    RepoVersions,
    RoleSigners,
    refresh_chain,
    serialize,
)
from ota_server.db.copy_rows import insert_rows
from ota_server.db.models import RepoFile
from ota_server.db.one_of import one_of
from ota_server.signing.chains import Chain, ChainOrder, sign_chain
from ota_server.signing.keys import RepoKeys
from ota_server.signing.prepared import PreparedChains
from ota_server.signing.signing_pool import SigningPool, keyids_of
from ota_server.signing.store import CHAIN, DIRECTOR, put_file

log = logging.getLogger(__name__)
_CHUNK = 500
_QUEUE_CHUNK = 5000  # rows per upsert statement (sent as multi-row VALUES batches)
DIRECTOR_ONLINE_ROLES = ("targets", "snapshot", "timestamp")
# A VIN's queued, not yet signed assignment (not metadata: never served).
PENDING = "assignment.pending.json"


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


# {vin: (images by ECU serial, floor by ECU serial, ECU failure policy, maintenance window)}
Plan = Mapping[str, tuple[Mapping[str, TargetFile], Mapping[str, int | None], str | None, Mapping[str, Any] | None]]


def with_terms(
    plan: Mapping[str, Mapping[str, TargetFile]],
    *,
    min_release_counter: int | None = None,
    floors: Mapping[str, int] | None = None,
    ecu_failure_policy: str | None = None,
    windows: Mapping[str, Mapping[str, Any]] | None = None,
) -> Plan:
    """Each VIN's images with its floors (``floors`` by image path, else ``min_release_counter``), the
    ECU failure policy and its window (arguments as :meth:`Director.queue`)."""
    floor_of = floors or {}
    return {
        vin: (
            images,
            {serial: floor_of.get(image.path, min_release_counter) for serial, image in images.items()},
            ecu_failure_policy,
            (windows or {}).get(vin),
        )
        for vin, images in plan.items()
    }


def _orders(plan: Plan, previous: Mapping[str, Mapping[str, int]]) -> list[ChainOrder]:
    """Each VIN's chain order after its ``previous`` chain versions (none: a first chain)."""
    orders = []
    for vin, (images, floors, policy, window) in plan.items():
        old = previous.get(vin, {})
        versions = RepoVersions(old.get("targets.json", 0), old.get("snapshot.json", 0), old.get("timestamp.json", 0))
        orders.append(ChainOrder(vin, images, versions, floors, policy, window))
    return orders


@dataclass(frozen=True)
class Signed:
    """Chains just signed (or taken as signed ahead), by VIN, not written yet."""

    chains: dict[str, Chain]
    stored: frozenset[str]  # the VINs with a chain stored already: their rows are updated, the others' inserted
    at: datetime

    def write(self, session: Session) -> dict[str, Chain]:
        """Store every chain in ``session`` (the caller commits), once; the chains, by VIN."""
        new_rows: list[dict[str, Any]] = []
        changed_rows: list[dict[str, Any]] = []
        for vin, chain in self.chains.items():
            rows = [
                {
                    "repo": DIRECTOR,
                    "owner": vin,
                    "name": name,
                    "version": chain[name][0],
                    "data": chain[name][1],
                    "updated_at": self.at,
                }
                for name in CHAIN
            ]
            (changed_rows if vin in self.stored else new_rows).extend(rows)
        insert_rows(session, RepoFile, new_rows)
        if changed_rows:
            session.execute(update(RepoFile), changed_rows)
        return self.chains


class Director:
    def __init__(
        self,
        keys: RepoKeys,
        expiry: Expiry | None = None,
        *,
        signers_ttl_s: float = 0.0,
        pool: SigningPool | None = None,
    ) -> None:
        """``pool``: signing processes for large plans (a launch's ticks); None: every chain signed here."""
        self.keys = keys
        self.expiry = expiry or Expiry()
        self._pool = pool
        self.prepared = PreparedChains(
            self.expiry
        )  # chains signed ahead of a launch (a safety recall awaiting approval)
        # Signing is per car (on its first fetch), so the keys matched to the current root are
        # kept this long instead of reading the roots for every car; a rotation made by the
        # CLI straight on the database is used within this many seconds.
        self._signers_ttl_s = signers_ttl_s
        self._signers: tuple[float, RoleSigners] | None = None

    def start(self) -> None:
        """Start the signing processes, if any, in the background (the server's start-up)."""
        if self._pool is not None:
            self._pool.start()

    def close(self) -> None:
        """Stop the signing processes, if any (the server's shutdown)."""
        if self._pool is not None:
            self._pool.close()

    def signers(self, session: Session) -> RoleSigners:
        kept = self._signers
        now = time.monotonic()
        if kept is not None and now - kept[0] < self._signers_ttl_s:
            return kept[1]
        signers = self.keys.signers(session)
        self._signers = (now, signers)
        return signers

    def _previous(self, session: Session, vins: Sequence[str], *, lock: bool = True) -> dict[str, dict[str, int]]:
        """The current chain versions of ``vins``, their rows locked in (VIN, name) order (``lock``)."""
        found: dict[str, dict[str, int]] = {}
        for chunk in _chunks(sorted(vins)):
            query = (
                select(RepoFile.owner, RepoFile.name, RepoFile.version)
                .where(RepoFile.repo == DIRECTOR, one_of(RepoFile.owner, chunk), RepoFile.name.in_(CHAIN))
                .order_by(RepoFile.owner, RepoFile.name)
            )
            rows = session.execute(query.with_for_update() if lock else query)
            for owner, name, version in rows:
                found.setdefault(owner, {})[name] = version
        return found

    def _sign_plan(self, session: Session, plan: Plan, now: datetime) -> Signed:
        """Sign each VIN's next chain (``{vin: (images, floor by ECU serial, policy, window)}``) in bulk:
        in the signing pool when there is one and the plan is large, else here; a chain signed
        ahead for exactly this order (:mod:`ota_server.signing.prepared`) is used as it is. Not
        written yet: :meth:`Signed.write` stores the chains in the caller's session."""
        signers = self.signers(session)
        previous = self._previous(session, list(plan))
        orders = _orders(plan, previous)
        ahead = self.prepared.take(orders, keyids_of(signers), now)
        if ahead:
            log.info("%d of %d chains signed ahead, %d signed now", len(ahead), len(orders), len(orders) - len(ahead))
        unsigned = [order for order in orders if order.vin not in ahead]
        fresh = iter(self._sign_orders(signers, unsigned, now))
        signed = [ahead[order.vin] if order.vin in ahead else next(fresh) for order in orders]
        return Signed({order.vin: chain for order, chain in zip(orders, signed, strict=True)}, frozenset(previous), now)

    def _lock_queued(self, session: Session, vins: Sequence[str]) -> dict[str, bytes]:
        """The queued rows of ``vins``, locked in VIN order (a stable order: no deadlock between batches)."""
        found: dict[str, bytes] = {}
        for chunk in _chunks(sorted(vins)):
            rows = session.execute(
                select(RepoFile.owner, RepoFile.data)
                .where(RepoFile.repo == DIRECTOR, one_of(RepoFile.owner, chunk), RepoFile.name == PENDING)
                .order_by(RepoFile.owner)
                .with_for_update()
            )
            found.update((owner, bytes(data)) for owner, data in rows)
        return found

    def queue(
        self,
        session: Session,
        plan: Mapping[str, Mapping[str, TargetFile]],
        now: datetime,
        *,
        min_release_counter: int | None = None,
        floors: Mapping[str, int] | None = None,
        ecu_failure_policy: str | None = None,
        windows: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Queue each VIN's next assignment (``{vin: {ecu_serial: image target}}``), signed when the car asks.

        All of a car's ECUs are assigned together, in its one targets metadata. Each image
        carries ``min_release_counter`` as its floor, or ``floors[release target path]`` when
        given (a multi-ECU recall: each release's own floor). ``ecu_failure_policy`` is the
        recall's: what the car does when one of its ECUs fails (signed in each target).
        ``windows[vin]``: that car's maintenance window (:class:`firmware_bundles.window.InstallWindow`
        as JSON), signed in its targets; a VIN without one may install at any hour.

        One upsert per chunk, in VIN order (the order the signer locks queued rows in): a
        queued assignment not yet signed is replaced, and the primary key is the only index
        used, whatever the planner knows about a freshly registered fleet.
        """
        rows = [
            {
                "repo": DIRECTOR,
                "owner": vin,
                "name": PENDING,
                "version": 0,
                "data": json.dumps(
                    {
                        "min_release_counter": min_release_counter,
                        "ecu_failure_policy": ecu_failure_policy,
                        "maintenance_window": (windows or {}).get(vin),
                        "images": {
                            serial: {
                                "path": image.path,
                                "info": image.to_dict(),
                                "floor": (floors or {}).get(image.path, min_release_counter),
                            }
                            for serial, image in images.items()
                        },
                    },
                    separators=(",", ":"),
                ).encode(),
                "updated_at": now,
            }
            for vin, images in sorted(plan.items())
        ]
        upsert = (
            postgresql_insert(RepoFile) if session.get_bind().dialect.name == "postgresql" else sqlite_insert(RepoFile)
        )
        statement = upsert.on_conflict_do_update(
            index_elements=[RepoFile.repo, RepoFile.owner, RepoFile.name],
            set_={"version": upsert.excluded.version, "data": upsert.excluded.data, "updated_at": now},
        )
        for start in range(0, len(rows), _QUEUE_CHUNK):
            session.execute(statement, rows[start : start + _QUEUE_CHUNK])

    def signed_now(
        self,
        session: Session,
        plan: Mapping[str, Mapping[str, TargetFile]],
        now: datetime,
        *,
        min_release_counter: int | None = None,
        floors: Mapping[str, int] | None = None,
        ecu_failure_policy: str | None = None,
        windows: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Signed:
        """Sign each VIN's next assignment at once (arguments as :meth:`queue`), not written yet:
        :meth:`Signed.write` stores the chains in ``session`` (before it commits), so they can be used
        meanwhile (a launch's notices carrying them are made while PostgreSQL writes them, issue 19).

        What :meth:`queue` then :meth:`sign_queued` in the same transaction do, without writing
        the queued row only to lock, read, parse and delete it again (a notifying tick whose
        notices carry the chains).

        A row still queued for one of these VINs (an earlier assignment never signed) is deleted
        first, in VIN order: this assignment replaces it, and it must never be signed after this one.
        """
        for chunk in _chunks(sorted(plan)):
            session.execute(
                delete(RepoFile).where(
                    RepoFile.repo == DIRECTOR, one_of(RepoFile.owner, chunk), RepoFile.name == PENDING
                )
            )
        terms = with_terms(
            plan,
            min_release_counter=min_release_counter,
            floors=floors,
            ecu_failure_policy=ecu_failure_policy,
            windows=windows,
        )
        return self._sign_plan(session, terms, now)

    def prepare(self, session: Session, plan: Plan, now: datetime) -> int:
        """Sign ahead what :meth:`signed_now` would sign for ``plan`` (:func:`with_terms` of its arguments)
        now, keep it in memory for the launch (:mod:`ota_server.signing.prepared`) and return how many;
        nothing is written, locked or served. More cars than :attr:`prepared` holds: none is signed, 0."""
        if not plan or len(plan) > self.prepared.limit:
            return 0
        signers = self.signers(session)
        orders = _orders(plan, self._previous(session, sorted(plan), lock=False))
        session.rollback()  # read only: no transaction (nor PostgreSQL's snapshot) held while signing
        with self.prepared.preparing(orders):
            self.prepared.put(orders, self._sign_orders(signers, orders, now), keyids_of(signers), now)
        return len(orders)

    def _sign_orders(self, signers: RoleSigners, orders: Sequence[ChainOrder], now: datetime) -> list[Chain]:
        """Each order's chain, in order: in the signing pool when there is one and the plan is large, else here."""
        if not orders:
            return []
        signed = self._pool.sign(signers, self.expiry, now, orders) if self._pool is not None else None
        if signed is None:
            signed = [sign_chain(signers, self.expiry, now, order) for order in orders]
        return signed

    def sign_queued(self, session: Session, vins: Sequence[str], now: datetime) -> dict[str, Chain]:
        """Sign the queued assignments of ``vins`` together, under their rows' locks; the caller commits.

        One transaction for all: queued rows locked in VIN order, previous versions read
        in one query, every chain written in bulk, the queued rows deleted. A VIN with
        nothing queued (another replica signed it first) is not in the answer.
        """
        queued = {vin: json.loads(data) for vin, data in self._lock_queued(session, vins).items()}
        if not queued:
            return {}
        plan = {
            vin: (
                {
                    serial: TargetFile.from_dict(dict(entry["info"]), str(entry["path"]))
                    for serial, entry in payload["images"].items()
                },
                {
                    # a row queued before per-image floors has the one floor for all
                    serial: entry.get("floor", payload["min_release_counter"])
                    for serial, entry in payload["images"].items()
                },
                payload.get("ecu_failure_policy"),  # absent in a row queued before the policy
                payload.get("maintenance_window"),  # absent in a row queued before windows were signed
            )
            for vin, payload in queued.items()
        }
        chains = self._sign_plan(session, plan, now).write(session)
        signed = sorted(queued)
        for chunk in _chunks(signed):
            session.execute(
                delete(RepoFile).where(
                    RepoFile.repo == DIRECTOR, one_of(RepoFile.owner, chunk), RepoFile.name == PENDING
                )
            )
        return chains

    def refresh(self, session: Session, vin: str, now: datetime, *, force: Collection[str] = ()) -> list[str]:
        """Re-sign what of ``vin``'s chain is due (or forced), under the rows' lock; the caller commits."""
        return self.refreshed(session, vin, now, force=force)[0]

    def refreshed(
        self, session: Session, vin: str, now: datetime, *, force: Collection[str] = ()
    ) -> tuple[list[str], Chain | None]:
        """:meth:`refresh`, also giving the chain as it now is (None when ``vin`` has no complete chain)."""
        rows = session.scalars(
            select(RepoFile)
            .where(RepoFile.repo == DIRECTOR, RepoFile.owner == vin)
            .order_by(RepoFile.name)  # the queued row first, as the signer locks it
            .with_for_update()
        ).all()
        chain: Chain = {row.name: (row.version, bytes(row.data)) for row in rows if row.name in CHAIN}
        if len(chain) != len(CHAIN):
            return [], None
        files = {name: data for name, (_version, data) in chain.items()}
        changed = refresh_chain(files, self.signers(session), self.expiry, now, force=force)
        for name, (version, data) in changed.items():
            put_file(session, DIRECTOR, vin, name, version, data, now)
            chain[name] = (version, data)
        return sorted(changed), chain

    def assigned(self, session: Session, vin: str) -> tuple[dict[str, TargetFile], SignedConsent | None]:
        """What the car is (or, once it asks, will be) told to install, by ECU serial, and the
        owner's answer signed with it. The queued assignment wins over the signed chain."""
        pending = session.scalar(
            select(RepoFile.data).where(RepoFile.repo == DIRECTOR, RepoFile.owner == vin, RepoFile.name == PENDING)
        )
        if pending is not None:
            payload = json.loads(bytes(pending))
            images = {
                serial: TargetFile.from_dict(dict(entry["info"]), str(entry["path"]))
                for serial, entry in payload["images"].items()
            }
            return images, None
        data = session.scalar(
            select(RepoFile.data).where(
                RepoFile.repo == DIRECTOR, RepoFile.owner == vin, RepoFile.name == "targets.json"
            )
        )
        if data is None:
            return {}, None
        signed = Metadata[Targets].from_bytes(bytes(data)).signed
        images = {str(tf.custom.get("ecu_serial", path)): tf for path, tf in signed.targets.items()}
        body = signed.unrecognized_fields.get(CONSENT_FIELD)
        try:
            consent = SignedConsent.from_json(body) if body is not None else None
        except ValueError:
            consent = None
        return images, consent

    def sign_consent(self, session: Session, vin: str, consent: SignedConsent, now: datetime) -> Chain | None:
        """Re-sign ``vin``'s targets with the owner's answer (its queued assignment signed first);
        the caller commits. None when the VIN has no assignment to answer."""
        self.sign_queued(session, [vin], now)
        rows = session.scalars(
            select(RepoFile)
            .where(RepoFile.repo == DIRECTOR, RepoFile.owner == vin, RepoFile.name.in_(CHAIN))
            .order_by(RepoFile.name)
            .with_for_update()
        ).all()
        files = {row.name: bytes(row.data) for row in rows}
        if len(files) != len(CHAIN):
            return None
        targets = Metadata[Targets].from_bytes(files["targets.json"])
        targets.signed.unrecognized_fields[CONSENT_FIELD] = consent.to_json()
        files["targets.json"] = serialize(targets)
        changed = refresh_chain(files, self.signers(session), self.expiry, now, force=("targets",))
        for name, (version, data) in changed.items():
            put_file(session, DIRECTOR, vin, name, version, data, now)
        return changed

    def vins(self, session: Session) -> list[str]:
        """Every VIN with a chain."""
        query = select(RepoFile.owner).where(RepoFile.repo == DIRECTOR, RepoFile.name == "timestamp.json")
        return list(session.scalars(query))
