"""Planner statistics for tables a request has just filled in bulk (PostgreSQL).

A table loaded in one go (a launch enrolling a campaign's cars, an import of a fleet) has no
statistics until autovacuum's next visit to its database, a minute or more later: until then
the planner takes a few rows for thousands and picks a nested loop over both sides. Measured
under ``ota-bench --cars 2000`` (issue 19): progress's per-ECU join of ``campaign_ecus`` with
``campaign_vehicles`` took ~1 s per poll that way (4,000,000 row comparisons; quadratic in the
fleet), two thirds of PostgreSQL's time per car, and ~2 ms once the tables were analyzed.
So the writer analyzes what it loaded, right after its commit.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

BULK_ROWS = 500  # below this the planner's defaults pick the same plans: not worth an ANALYZE

_KNOWN = frozenset({"campaign_vehicles", "campaign_ecus", "vehicles", "ecus"})


def analyze_loaded(session: Session, rows: int, *tables: str) -> bool:
    """ANALYZE ``tables`` after ``rows`` were loaded into them and committed; True if it ran.

    Outside a transaction's work (call it after the commit); a failure (e.g. a role that does
    not own the tables) is logged and left to autovacuum, never raised: statistics are an
    optimisation, the load itself is done.
    """
    if rows < BULK_ROWS or session.get_bind().dialect.name != "postgresql":
        return False
    unknown = set(tables) - _KNOWN
    if unknown:
        raise ValueError(f"not a bulk-loaded table: {sorted(unknown)}")  # names go into SQL text
    try:
        session.execute(text(f"ANALYZE {', '.join(tables)}"))
        session.commit()
    except DBAPIError as exc:
        session.rollback()
        log.warning("ANALYZE %s after loading %d rows failed (autovacuum will): %s", tables, rows, exc)
        return False
    return True
