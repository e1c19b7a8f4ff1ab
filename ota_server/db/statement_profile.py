"""Which SQL statements a server process runs, how often and for how long (``OTA_SQL_PROFILE``).

pg_stat_statements needs a preload and a PostgreSQL restart; this needs neither. With
``OTA_SQL_PROFILE=/path/profile.json`` in the environment, every engine made by
:func:`ota_server.db.session.make_engine` times each cursor execution on the client side (the
database's wall time plus the round trip, not its CPU) and the JSON is written when the process
exits: per (calling site, normalised statement) the count, total seconds and rows. The calling
site is the first frame in ``ota_server`` outside ``ota_server/db``, so ingest, the scheduler and
the HTTP routes are told apart. ``python -m ota_server.db.statement_profile FILE --cars N`` prints
the ranking per car. Off (no listener at all) when the variable is unset.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event

ENV = "OTA_SQL_PROFILE"

_SPACE = re.compile(r"\s+")
_PARAM = re.compile(r"%\([^)]*\)s|\$\d+|\?|:\w+")
_TUPLES = re.compile(r"\((?:%s, )*%s\)(?:, \((?:%s, )*%s\))+")
_LIST = re.compile(r"\((?:%s, )+%s\)")
_CAST = re.compile(r"%s::[A-Z_ ]+(?:\[\])?")


def normalise(statement: str) -> str:
    """One text per statement shape: whitespace collapsed, parameters and VALUES/IN lists folded."""
    text = _SPACE.sub(" ", statement).strip()
    text = _PARAM.sub("%s", text)
    text = _CAST.sub("%s", text)
    text = _TUPLES.sub("(...), ...", text)
    return _LIST.sub("(...)", text)


def calling_site() -> str:
    """``module:function`` of the nearest caller in ota_server outside ota_server/db."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("ota_server.") and not name.startswith("ota_server.db"):
            return f"{name.removeprefix('ota_server.')}:{frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


@dataclass
class Tally:
    count: int = 0
    seconds: float = 0.0
    rows: int = 0


class StatementProfile:
    """Tallies per (site, statement); thread-safe (ingest, the scheduler and readers share it)."""

    def __init__(self) -> None:
        self.tallies: dict[tuple[str, str], Tally] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, _conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool) -> None:
        self._local.started = time.perf_counter()

    def _after(self, _conn: Any, cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        elapsed = time.perf_counter() - getattr(self._local, "started", time.perf_counter())
        rows = cursor.rowcount if isinstance(cursor.rowcount, int) and cursor.rowcount > 0 else 0
        key = (calling_site(), normalise(statement))
        with self._lock:
            tally = self.tallies.setdefault(key, Tally())
            tally.count += 1
            tally.seconds += elapsed
            tally.rows += rows

    def as_json(self) -> list[dict[str, Any]]:
        with self._lock:
            items = sorted(self.tallies.items(), key=lambda kv: -kv[1].seconds)
            return [
                {"site": site, "statement": text, "count": t.count, "seconds": round(t.seconds, 6), "rows": t.rows}
                for (site, text), t in items
            ]

    def dump(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.as_json(), indent=1))
        tmp.replace(path)


_PROFILE: StatementProfile | None = None


def attach_if_enabled(engine: Engine) -> None:
    """Profile ``engine``'s statements when ``OTA_SQL_PROFILE`` names a file (one profile per process)."""
    global _PROFILE
    target = os.environ.get(ENV)
    if not target:
        return
    if _PROFILE is None:
        profile = StatementProfile()
        atexit.register(profile.dump, Path(target))
        _PROFILE = profile
    _PROFILE.attach(engine)


def ranking(entries: list[dict[str, Any]], cars: int, top: int) -> str:
    """A markdown table: per car remedied, milliseconds and statements, biggest first."""
    total_s = sum(e["seconds"] for e in entries) or 1.0
    lines = [
        "| site | statement | ms/car | share | calls/car | rows/call |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for e in entries[:top]:
        text = e["statement"] if len(e["statement"]) <= 90 else e["statement"][:87] + "..."
        lines.append(
            f"| {e['site']} | `{text}` | {1000 * e['seconds'] / cars:.3f} | {e['seconds'] / total_s:.1%} "
            f"| {e['count'] / cars:.2f} | {e['rows'] / max(e['count'], 1):.1f} |"
        )
    count = sum(e["count"] for e in entries)
    lines.append(f"| all | {len(entries)} shapes | {1000 * total_s / cars:.3f} | 100% | {count / cars:.2f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--cars", type=int, required=True, help="cars remedied in the profiled run")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--by-site", action="store_true", help="sum per calling site instead of per statement")
    args = parser.parse_args(argv)
    entries: list[dict[str, Any]] = json.loads(args.profile.read_text())
    if args.by_site:
        sites: dict[str, dict[str, Any]] = {}
        for e in entries:
            s = sites.setdefault(e["site"], {"site": e["site"], "shapes": 0, "count": 0, "seconds": 0.0, "rows": 0})
            s["shapes"] += 1
            s["count"] += e["count"]
            s["seconds"] += e["seconds"]
            s["rows"] += e["rows"]
        entries = sorted(sites.values(), key=lambda e: -e["seconds"])
        for s in entries:
            s["statement"] = f"{s['shapes']} statement shapes"
    print(ranking(entries, args.cars, args.top))


if __name__ == "__main__":
    main()
