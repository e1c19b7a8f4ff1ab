"""Director chains signed ahead of a launch: a safety recall's, while it waits for its second person.

Signing is most of a large launch's notifying tick (three signatures per car: ~2 s of both
cores for 30,000 cars on the bench machine). A safety recall's launch is requested by one
person and approved by another, usually minutes or hours later; the chains the approval's tick
will sign are known at the request, so the server signs them then (:meth:`Director.prepare`) and
keeps them here, in memory, never stored or served. Eclipse hawkBit's rollouts work the same
way: created (its actions prepared) first, started later.

A chain signed ahead is used only if nothing it was signed from has changed. The tick builds
each car's order (:class:`ota_server.signing.chains.ChainOrder`: images, floors, policy,
window and the chain versions it follows, read under the rows' locks) exactly as it would to
sign it; a chain signed ahead is taken only when its order is equal, its signing keys are
still the Director's current online keys and none of its three files is yet due for
re-signing (:func:`firmware_bundles.uptane.due`). Anything else (another campaign notified the
car, a consent or a refresh moved its versions, the population, the plan or a release
changed, a key was rotated, the approval came late) is signed anew, as without this. So a
chain signed ahead is byte for byte one the tick could have signed itself, a little earlier.

A chain is taken once (used or found stale, it is dropped); chains no longer fresh are dropped
anyway (a request never approved, or approved on another replica). A replica that did not
prepare a launch signs it as before. A tick that wants exactly the order a preparation is still
signing waits for it rather than signing the car twice; a car's fetch, consent or another
campaign wanting another order for the car does not wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from firmware_bundles.uptane import Expiry, due
from ota_server.signing.chains import Chain, ChainOrder
from ota_server.signing.signing_pool import KeyIds

# Chains kept at most (~3 KiB each): a larger preparation is not made, the oldest go first.
MAX_PREPARED = 100_000
SWEEP_EVERY_S = 60.0  # chains no longer fresh are dropped at most this often (and at each put)


@dataclass(frozen=True)
class _Ahead:
    order: ChainOrder
    keyids: KeyIds
    chain: Chain
    signed_at: datetime


def fresh(signed_at: datetime, expiry: Expiry, now: datetime) -> bool:
    """A chain signed at ``signed_at`` would not yet be re-signed at ``now`` (none of its files due)."""
    if now < signed_at:
        return False
    lifetimes = (expiry.targets, expiry.snapshot, expiry.timestamp)
    return not any(due(signed_at + lifetime, lifetime, now) for lifetime in lifetimes)


def same_order(a: ChainOrder, b: ChainOrder) -> bool:
    """``a`` and ``b`` sign the same chain: equal, and their images listed in the same order (two ECUs
    with one bundle: the first serial listed is named in the targets, so the order is signed too)."""
    return a == b and list(a.images) == list(b.images)


class PreparedChains:
    """The chains signed ahead, by VIN (one per car: a newer preparation replaces it)."""

    def __init__(self, expiry: Expiry, limit: int = MAX_PREPARED) -> None:
        self.limit = limit
        self._expiry = expiry
        self._chains: dict[str, _Ahead] = {}
        # VIN -> (the order a preparation is signing for it, how many preparations are)
        self._in_progress: dict[str, tuple[ChainOrder, int]] = {}
        self._changed = threading.Condition()
        self._swept = time.monotonic()

    def __len__(self) -> int:
        with self._changed:
            return len(self._chains)

    @contextmanager
    def preparing(self, orders: Sequence[ChainOrder]) -> Iterator[None]:
        """Mark ``orders`` as being signed ahead: a tick wanting exactly one of them waits until this ends."""
        with self._changed:
            for order in orders:
                _, count = self._in_progress.get(order.vin, (order, 0))
                self._in_progress[order.vin] = (order, count + 1)
        try:
            yield
        finally:
            with self._changed:
                for order in orders:
                    kept = self._in_progress.get(order.vin)
                    if kept is not None and kept[1] > 1:
                        self._in_progress[order.vin] = (kept[0], kept[1] - 1)
                    else:
                        self._in_progress.pop(order.vin, None)
                self._changed.notify_all()

    def put(self, orders: Sequence[ChainOrder], chains: Sequence[Chain], keyids: KeyIds, signed_at: datetime) -> None:
        """Keep each order's chain (replacing the car's earlier one); those no longer fresh are dropped,
        then the oldest beyond ``limit``."""
        with self._changed:
            for order, chain in zip(orders, chains, strict=True):
                self._chains.pop(order.vin, None)  # re-inserted last: the dict's order is the age
                self._chains[order.vin] = _Ahead(order, keyids, chain, signed_at)
            self._sweep(signed_at)
            while len(self._chains) > self.limit:
                del self._chains[next(iter(self._chains))]

    def take(
        self, orders: Sequence[ChainOrder], keyids: KeyIds, now: datetime, *, wait_s: float = 60.0
    ) -> dict[str, Chain]:
        """The chains signed ahead that are exactly what ``orders`` would sign now, by VIN.

        Every chain kept for these VINs is dropped, used or not. A preparation still signing exactly
        one of these orders is waited for (at most ``wait_s``; then it is waited for no more, by
        anyone, and whatever is kept is judged as it is); a car it signs another order for is not.
        """
        found: dict[str, Chain] = {}
        with self._changed:
            if not self._chains and not self._in_progress:
                return found
            if time.monotonic() - self._swept > SWEEP_EVERY_S:
                self._sweep(now)

            def awaited() -> list[str]:
                return [
                    order.vin
                    for order in orders
                    if (signing := self._in_progress.get(order.vin)) is not None and same_order(signing[0], order)
                ]

            if not self._changed.wait_for(lambda: not awaited(), timeout=wait_s):
                for vin in awaited():  # a preparation stuck (a signing process hung): never waited for again
                    self._in_progress.pop(vin, None)
            judged: dict[datetime, bool] = {}  # a preparation's chains share their signing time: judged once
            for order in orders:
                ahead = self._chains.pop(order.vin, None)
                if ahead is None or not same_order(ahead.order, order) or ahead.keyids != keyids:
                    continue
                if (still := judged.get(ahead.signed_at)) is None:
                    still = judged[ahead.signed_at] = fresh(ahead.signed_at, self._expiry, now)
                if still:
                    found[order.vin] = ahead.chain
        return found

    def _sweep(self, now: datetime) -> None:
        """Drop the chains no longer fresh at ``now`` (the caller holds the lock)."""
        self._swept = time.monotonic()
        for vin in [vin for vin, ahead in self._chains.items() if not fresh(ahead.signed_at, self._expiry, now)]:
            del self._chains[vin]
