"""The Director's chains signed in processes of their own, beside the server's one GIL (issue 19).

A launch's notifying tick signs three files per car (targets, snapshot, timestamp): at 30,000
cars ~4.8 s of the tick thread, on the GIL the event loop needs for the cars' requests and
reports. :class:`SigningPool` hands a large plan to ``processes`` child processes instead, in
equal slices, and waits (without the GIL) for their signed bytes.

Key handling: no private key crosses the pipe. Each child reads the same key directory the
server reads (the Director's online keys, on the server's disk, readable by its user only)
into its own :class:`~ota_server.signing.keys.Keyring`, and the server sends, with each slice,
only the key ids the current root trusts for each role; a child that does not hold one of
them refuses the slice (:class:`MissingKey`). The children are the server's own (``spawn``:
fresh interpreters that inherit no thread, socket or database connection), live as long as it
does and take nothing but plans. A slice that fails for any reason is signed in the server's
own process instead, so a broken pool costs time, never a chain.

The bytes are the same either way: both run :func:`ota_server.signing.chains.sign_chain`, and
ed25519 signatures are deterministic (``tests/ota_server/test_signing_pool.py`` compares them).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

from firmware_bundles.uptane import Expiry, RoleSigners
from ota_server.errors import NotReady
from ota_server.signing.chains import Chain, ChainOrder, sign_chain
from ota_server.signing.keys import Keyring

log = logging.getLogger(__name__)

ROLES = ("targets", "snapshot", "timestamp")
MIN_ORDERS = 500  # a plan this large or larger goes to the pool (a tick's first batch is 1,000 cars)
MAX_SLICE = 1000  # orders per slice sent to one process
PARENT_CHECK_S = 1.0  # how often a signing process checks that the server still runs
KeyIds = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # per role in ROLES


class MissingKey(NotReady):
    """A signing process does not hold a key the current root trusts (the server signs the slice)."""


# -- in the child ------------------------------------------------------------------------------

_keyring: Keyring | None = None


def _start_child(directories: Sequence[str], parent: int) -> None:
    global _keyring
    _keyring = Keyring([Path(directory) for directory in directories])
    threading.Thread(target=_exit_with, args=(parent,), name="ota-signer-parent", daemon=True).start()


def _exit_with(parent: int) -> None:
    """End this process once the server is gone (killed: nothing else would tell it)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _signers(keyids: KeyIds) -> RoleSigners:
    assert _keyring is not None, "the signing process was not started by SigningPool"
    found = []
    for role, ids in zip(ROLES, keyids, strict=True):
        signers = [_keyring.get(keyid) for keyid in ids]
        missing = [keyid for keyid, signer in zip(ids, signers, strict=True) if signer is None]
        if missing:
            raise MissingKey(f"the signing process holds no {role} key {', '.join(missing)}")
        found.append([signer for signer in signers if signer is not None])
    return RoleSigners([], *found)


def _ready() -> bool:
    """Nothing: run once per process at :meth:`SigningPool.start`, so each child is up before a launch."""
    return _keyring is not None


def _sign_slice(keyids: KeyIds, expiry: Expiry, now: datetime, orders: Sequence[ChainOrder]) -> list[Chain]:
    """One slice of a plan, in a child: each order's chain, in order."""
    signers = _signers(keyids)
    return [sign_chain(signers, expiry, now, order) for order in orders]


# -- in the server -----------------------------------------------------------------------------


def keyids_of(signers: RoleSigners) -> KeyIds:
    """The key ids of the roles a Director chain is signed by."""
    ids = [tuple(signer.public_key.keyid for signer in signers.for_role(role)) for role in ROLES]
    return ids[0], ids[1], ids[2]


class SigningPool:
    """``processes`` signing processes, started by :meth:`start` (the server's start-up) or on first use;
    plans of ``min_orders`` cars or more go there."""

    def __init__(self, directories: Sequence[Path], processes: int, *, min_orders: int | None = None) -> None:
        if processes < 1:
            raise ValueError("a signing pool needs at least one process")
        self._directories = [str(directory) for directory in directories]
        self.processes = processes
        self.min_orders = MIN_ORDERS if min_orders is None else min_orders
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(self._directories, os.getpid()),
                )
            return self._executor

    def start(self) -> None:
        """Start the processes now, not in the first launch's tick (each takes ~0.5 s to import and
        read its keys); returns at once."""
        executor = self._pool()
        for _ in range(self.processes):
            executor.submit(_ready)

    def _discard(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    def sign(
        self, signers: RoleSigners, expiry: Expiry, now: datetime, orders: Sequence[ChainOrder]
    ) -> list[Chain] | None:
        """Each order's chain, in order, signed in the pool; None when the plan is small or the pool
        failed (the caller then signs in its own process: nothing is ever left unsigned)."""
        if len(orders) < self.min_orders:
            return None
        keyids = keyids_of(signers)
        # Equal slices, none above MAX_SLICE: each process holds one slice's chains at a time
        # (a 16,000-car tick in two slices peaked at ~150 MiB a process), and the first slices'
        # results come back while the last are signed.
        size = min(-(-len(orders) // self.processes), MAX_SLICE)
        executor = self._pool()
        try:
            futures: list[Future[list[Chain]]] = [
                executor.submit(_sign_slice, keyids, expiry, now, orders[start : start + size])
                for start in range(0, len(orders), size)
            ]
            return [chain for future in futures for chain in future.result()]
        except Exception as exc:  # a dead child, a key it lacks, a pickling error: sign here instead
            log.warning("signing pool failed (%s); signing %d chains in the server's process", exc, len(orders))
            self._discard(executor)
            return None

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
