"""The resident agent loads the verify/download/signing stack only when a campaign needs it.

An idle car holds its MQTT link and journal; python-tuf, httpx, cryptography and
bsdiff4 arrive with the first notice (bench/agent_idle.py measures the memory).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tuf", "httpx", "cryptography", "securesystemslib", "bsdiff4", "urllib3")


def test_agent_cli_and_agent_construction_load_no_heavy_stack() -> None:
    probe = (
        "import json, sys, vehicle_agent.cli, vehicle_agent.agent;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules if sys.modules[m] is not None})))"
    )
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True).stdout))
    assert loaded & set(HEAVY) == set()
