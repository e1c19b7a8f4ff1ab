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
PG_LOG_ENV = "OTA_SQL_PROFILE_PG_LOG"  # "1": PostgreSQL logs each statement's own duration too

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

    def attach(self, engine: Engine, *, pg_log: bool = False) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        if pg_log and engine.dialect.name == "postgresql":
            event.listen(engine, "connect", _log_every_statement)

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


def _log_every_statement(dbapi_connection: Any, _record: Any) -> None:
    """This session's statements in PostgreSQL's log with their server-side duration (superuser only):
    the database's own time per statement, free of this process's GIL and thread-pool waits."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET log_min_duration_statement = 0")
    finally:
        cursor.close()
    dbapi_connection.commit()


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
    _PROFILE.attach(engine, pg_log=os.environ.get(PG_LOG_ENV) == "1")


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


_LOG_ENTRY = re.compile(
    r"^\S+ \S+ \S+ \[\d+\] \S*@(?P<db>\S+) LOG:  duration: (?P<ms>[\d.]+) ms  (?P<step>\w+)[^:]*: (?P<sql>.*)"
)


def pg_log_entries(log: Path, database: str, sites: dict[str, str]) -> list[dict[str, Any]]:
    """Statements of ``database`` from PostgreSQL's log (``log_min_duration_statement = 0``), each
    statement's parse, bind and execute summed; ``sites`` names the calling site of a statement shape."""
    tallies: dict[str, Tally] = {}
    current: list[str] | None = None
    ms = 0.0

    def close() -> None:
        if current is not None:
            text = normalise(" ".join(current))
            tally = tallies.setdefault(text, Tally())
            tally.seconds += ms / 1000
            tally.count += step_counts

    step_counts = 0
    with log.open(errors="replace") as lines:
        for line in lines:
            if line.startswith("\t") and current is not None:
                current.append(line.strip())
                continue
            close()
            current = None
            found = _LOG_ENTRY.match(line)
            if found is None or found["db"] != database:
                continue
            current, ms = [found["sql"]], float(found["ms"])
            step_counts = 1 if found["step"] == "execute" or found["step"] == "statement" else 0
        close()
    entries = [
        {"site": sites.get(text, "?"), "statement": text, "count": t.count, "seconds": t.seconds, "rows": 0}
        for text, t in tallies.items()
    ]
    return sorted(entries, key=lambda e: -e["seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--cars", type=int, required=True, help="cars remedied in the profiled run")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--by-site", action="store_true", help="sum per calling site instead of per statement")
    parser.add_argument("--pg-log", type=Path, help="rank by PostgreSQL's own durations from this log instead")
    parser.add_argument("--database", help="with --pg-log: the run's database (ota-bench prints it)")
    args = parser.parse_args(argv)
    entries: list[dict[str, Any]] = json.loads(args.profile.read_text())
    if args.pg_log is not None:
        callers: dict[str, str] = {}
        for e in sorted(entries, key=lambda e: e["count"]):
            callers[e["statement"]] = e["site"]  # the site calling it most often wins
        entries = pg_log_entries(args.pg_log, args.database, callers)
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
