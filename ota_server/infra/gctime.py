"""Seconds a process spends in Python's cyclic garbage collector (``gc.callbacks``).

The server exports them on ``/metrics`` (``ota_gc_seconds_total``) and a simulator worker
in its summary: with tens of thousands of long-lived objects, full collections walk them all.

:func:`settle` is what a long-running process calls once started: measured at 30,000 cars,
the server had spent 62 of its first 193 CPU seconds in the collector with Python's
defaults (a young-generation pass every 700 allocations, the rest following).
"""

from __future__ import annotations

import gc
import time
from typing import Any


class GcTimer:
    """Seconds this process spends in the cyclic garbage collector, per generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        self._marked: tuple[list[float], list[int]] | None = None

    def install(self) -> GcTimer:
        gc.callbacks.append(self._on_gc)
        return self

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = int(info.get("generation", 2))
        self.seconds[generation] += time.perf_counter() - self._started
        self.collections[generation] += 1

    def mark(self) -> None:
        """From now on :meth:`as_json` also says what the collector spent since (e.g. since a launch)."""
        self._marked = (list(self.seconds), list(self.collections))

    def as_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "gc_seconds": round(sum(self.seconds), 3),
            "gc_seconds_by_generation": [round(s, 3) for s in self.seconds],
            "gc_collections_by_generation": list(self.collections),
        }
        if self._marked is not None:
            seconds, collections = self._marked
            found["gc_seconds_since_mark_by_generation"] = [
                round(now - then, 3) for now, then in zip(self.seconds, seconds, strict=True)
            ]
            found["gc_collections_since_mark_by_generation"] = [
                now - then for now, then in zip(self.collections, collections, strict=True)
            ]
        return found


# A young-generation pass every 50,000 container allocations instead of 700 (the memory held
# meanwhile is a few MB), the middle one every 50 of those, the full one every 100 of those.
THRESHOLDS = (50_000, 50, 100)
_PROCESS_TIMER: GcTimer | None = None


def settle() -> None:
    """Once started: what start-up built stays out of the collector's reach, and it runs less often."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


def process_timer() -> GcTimer:
    """This process's timer, installed on first use (several apps in one test process share it)."""
    global _PROCESS_TIMER
    if _PROCESS_TIMER is None:
        _PROCESS_TIMER = GcTimer().install()
    return _PROCESS_TIMER
