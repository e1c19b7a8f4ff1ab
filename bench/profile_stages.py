"""Sum a py-spy profile into the stages of docs/bench/profile-2000.md.

    py-spy record --gil --nonblocking -r 50 -f raw -o server.txt -p SERVER_PID
    python -m bench.profile_stages server server.txt
    python -m bench.profile_stages worker worker.txt

The input is py-spy's ``raw`` format (one collapsed stack and its sample count a line). A
stack counts for the first stage, in the order below, one of whose markers is in it: the
scheduler before ingest (it runs after a batch), report verification before the batch that
calls it, a simulated car's HTTP and MQTT clients before the agent code that calls them.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence

Stages = Sequence[tuple[str, Sequence[str]]]

SERVER: Stages = (
    ("scheduler (after-batch tick, rollout)", ("Ingestor._after", "scheduler.py", "ota_server/rollout/")),
    ("report verification (ed25519, canonical JSON)", ("_signature_problem", "verify_report")),
    ("ingest: batch read (_Batch)", ("_Batch.__init__",)),
    ("ingest: writes (events, state, last_seen, manifests, commit)", ("Ingestor.apply",)),
    (
        "ingest: MQTT receive, parse, queue",
        ("Ingestor.submit", "ota_server/mqtt/link.py", "Ingestor._run", "Ingestor._next_batch"),
    ),
    ("notices (publish, mark)", ("ota_server/mqtt/notices.py", "ota_server/mqtt/publisher.py", "mark_published")),
    (
        "metadata requests (Director signing, Image, roots)",
        (
            "RepoHttp._metadata",
            "RepoReader.director",
            "RepoReader.image",
            "services/repository.py",
            "ota_server/signing/",
        ),
    ),
    ("bundle requests", ("RepoHttp._target", "bundle_redirect")),
    ("other API routes (FastAPI)", ("fastapi/routing.py", "starlette/routing.py")),
    ("HTTP server (uvicorn parse/send, middleware)", ("uvicorn/", "starlette/", "fastapi/", "h11")),
    ("MQTT client (paho/aiomqtt)", ("paho/", "aiomqtt/")),
    ("database driver/pool (other)", ("psycopg", "sqlalchemy")),
    ("event loop / asyncio", ("asyncio/", "uvloop")),
)
WORKER: Stages = (
    (
        "simulated car's HTTP client (httpx/httpcore, or http.client)",
        ("httpx/", "httpcore/", "h11/", "http/client.py", "simulator/http_transport.py"),
    ),
    ("simulated car's MQTT client (aiomqtt/paho)", ("paho/", "aiomqtt/")),
    ("agent: TUF refresh and checks (python-tuf, securesystemslib)", ("tuf/", "securesystemslib/")),
    ("agent: report signing", ("report_signing", "_report_signer", "_build_report")),
    ("agent: journal (state files)", ("journal.py",)),
    ("agent: the rest (steps, bundle checks, install, link)", ("vehicle_agent/",)),
    ("simulator harness", ("simulator/",)),
    ("event loop / asyncio", ("asyncio/", "uvloop", "selectors")),
)


def stages(lines: Iterable[str], rules: Stages) -> tuple[Counter[str], int]:
    """Samples per stage (``other`` for a stack no stage claims) and the total."""
    found: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        name = next((stage for stage, marks in rules if any(mark in stack for mark in marks)), "other")
        found[name] += samples
    return found, total


def table(found: Counter[str], total: int) -> str:
    rows = ["| stage | samples | share |", "| --- | ---: | ---: |"]
    rows += [f"| {name} | {count} | {100 * count / max(total, 1):.1f}% |" for name, count in found.most_common()]
    rows.append(f"| total (50 Hz, GIL held) | {total} | |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("server", "worker"):
        print("usage: python -m bench.profile_stages server|worker PROFILE.txt", file=sys.stderr)
        return 2
    with open(args[1], encoding="utf-8") as profile:
        print(table(*stages(profile, SERVER if args[0] == "server" else WORKER)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
