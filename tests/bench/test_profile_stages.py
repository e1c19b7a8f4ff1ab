"""bench.profile_stages: each sample counts once, for the first stage that claims its stack."""

from __future__ import annotations

from bench.profile_stages import SERVER, WORKER, stages, table

LINES = [
    "run (asyncio/runners.py:1);Ingestor._run (ota_server/mqtt/ingest.py:2);Ingestor._after (x.py:3) 4",
    "_worker (t.py:1);Ingestor.apply (ota_server/mqtt/ingest.py:9);_signature_problem (i.py:3) 3",
    "_worker (t.py:1);Ingestor.apply (ota_server/mqtt/ingest.py:9);_saw (i.py:4) 2",
    "main (m.py:1);mystery (m.py:2) 1",
    "not a profile line",
]


def test_a_stack_counts_for_the_first_stage_that_claims_it() -> None:
    found, total = stages(LINES, SERVER)
    assert total == 10
    assert found["scheduler (after-batch tick, rollout)"] == 4  # not the ingest it runs under
    assert found["report verification (ed25519, canonical JSON)"] == 3  # not the batch that calls it
    assert found["ingest: writes (events, state, last_seen, manifests, commit)"] == 2
    assert found["other"] == 1
    assert "| other | 1 | 10.0% |" in table(found, total)


def test_a_cars_http_client_is_not_counted_as_the_agent_that_calls_it() -> None:
    line = "fetch (vehicle_agent/fetcher.py:1);refresh (tuf/ngclient/updater.py:2);getresponse (http/client.py:3) 5"
    found, _ = stages([line], WORKER)
    assert found == {"simulated car's HTTP client (httpx/httpcore, or http.client)": 5}
