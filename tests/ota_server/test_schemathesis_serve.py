"""Schemathesis with every check and every phase (stateful included), seeded and bounded, against
``ota serve`` on SQLite and on PostgreSQL: the OpenAPI schema is the truth about the API.

``make fuzz-api`` runs the same with more examples. A failure prints schemathesis's own report
(each case with a curl line to reproduce it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ota_server import schemathesis_serve
from tests.services import fresh_postgres_database


def _check(figures: schemathesis_serve.Figures) -> None:
    print(figures.line())  # the figures, with -s or in the report of a failure
    assert figures.operations >= 40 and figures.cases > 0, figures.output[-3000:]
    assert figures.exit_code == 0 and figures.failures == 0, figures.output[-20000:]


def test_schema_holds_against_ota_serve_on_sqlite(tmp_path: Path) -> None:
    _check(schemathesis_serve.run("sqlite", tmp_path, database_url=None, examples=schemathesis_serve.BOUNDED_EXAMPLES))


@pytest.mark.services
def test_schema_holds_against_ota_serve_on_postgresql(tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        figures = schemathesis_serve.run(
            "postgresql", tmp_path, database_url=url, examples=schemathesis_serve.BOUNDED_EXAMPLES
        )
    _check(figures)
