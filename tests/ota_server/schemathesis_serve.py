"""Schemathesis, every check and every phase (stateful included), against a real ``ota serve``.

Used by ``tests/ota_server/test_schemathesis_serve.py`` (a bounded, seeded run per backend, in
``make test``) and by ``make fuzz-api`` (``python -m tests.ota_server.schemathesis_serve``: the
same on both backends with more examples). The server gets a real release and a few cars first,
so recalls can be filed, launched and read through the schema's links.

Returns the figures (operations, cases, failures) from schemathesis's summary; a JUnit report
is left next to the server's data.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from simulator.server_process import ServerProcess
from tests.ota_server.helpers import HW, bundle_bytes, vehicle, vin
from tests.ota_server.schemathesis_hooks import KEEP_TOKENS_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = "tests.ota_server.schemathesis_hooks"
SEED = 20240514
# Per operation, in the fuzzing phase; the coverage phase adds its own cases; stateful scenarios
# are bounded by the same number.
BOUNDED_EXAMPLES = 15
LONG_EXAMPLES = 200


@dataclass(frozen=True)
class Figures:
    backend: str
    operations: int
    cases: int
    failures: int
    exit_code: int
    output: str  # schemathesis's console output, for the failure message

    def line(self) -> str:
        return f"{self.backend}: {self.operations} operations, {self.cases} cases, {self.failures} failures"


def server_env(database_url: str | None) -> dict[str, str]:
    """The environment for ``ota serve``: embedded broker, no per-token rate limit (429 is documented,
    but a fuzzer held back by it reaches less)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OTA_DATABASE_URL", "OTA_MQTT_URL")}
    env.update(OTA_RATE_LIMIT_PER_S="0", OTA_LOOKUP_RATE_PER_MIN="100000", OTA_LOOKUP_BURST="100000")
    if database_url is not None:
        env["OTA_DATABASE_URL"] = database_url
    return env


def seed_server(api_url: str, token: str) -> None:
    """A published release (id 1) and three cars it fits: what a recall needs to be filed and launched.

    ``token`` is the bootstrap admin's (token id 1), which the hooks keep from being revoked.
    """
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        resp = client.post(
            "/api/v1/releases",
            files={"file": ("fix.otab", bundle_bytes(), "application/octet-stream")},
            data={"hardware_id": HW, "version": "1.1.0", "release_counter": "2"},
        )
        resp.raise_for_status()
        resp = client.post("/api/v1/vehicles/batch", json={"vehicles": [vehicle(vin(n)) for n in range(1, 4)]})
        resp.raise_for_status()


def schemathesis_command(api_url: str, token: str, examples: int, seed: int, report: Path) -> list[str]:
    return [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{api_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--seed",
        str(seed),
        "--max-examples",
        str(examples),
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {token}",
        "--request-timeout",
        "60",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]


def figures_from(output: str) -> tuple[int, int, int]:
    """(operations tested, cases generated, failures) from schemathesis's summary."""
    tested = re.search(r"Tested: (\d+)", output)
    cases = re.search(r"(\d+) generated", output)
    failures = re.search(r"(\d+) found (\d+) unique failures", output)
    return (
        int(tested.group(1)) if tested else 0,
        int(cases.group(1)) if cases else 0,
        int(failures.group(2)) if failures else 0,
    )


def run(backend: str, data_dir: Path, *, database_url: str | None, examples: int, seed: int = SEED) -> Figures:
    """Start ``ota serve`` on ``backend``, seed it, run schemathesis against it, stop it."""
    server = ServerProcess(data_dir / "server", env=server_env(database_url))
    report = data_dir / "schemathesis.junit.xml"
    with server as endpoints:
        token = server.admin_token()
        seed_server(endpoints.api_url, token)
        env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(REPO_ROOT), KEEP_TOKENS_ENV: "1"}
        done = subprocess.run(
            schemathesis_command(endpoints.api_url, token, examples, seed, report),
            cwd=data_dir,  # schemathesis keeps a .schemathesis folder in its working directory
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    output = done.stdout + done.stderr
    return Figures(backend, *figures_from(output), done.returncode, output)


@contextmanager
def database(backend: str) -> Iterator[str | None]:
    if backend == "sqlite":
        yield None
        return
    from tests.services import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--examples", type=int, default=LONG_EXAMPLES)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "var" / "fuzz-api")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        with database(backend) as url:
            figures = run(backend, args.out / backend, database_url=url, examples=args.examples, seed=args.seed)
        print(figures.output)
        results.append(figures)
    for figures in results:
        print(figures.line())
    return 0 if all(f.exit_code == 0 and f.failures == 0 for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
