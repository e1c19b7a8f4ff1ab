"""The vehicle agent: receives a campaign notice, verifies, installs into the spare slot, reports.

One orchestrator (:class:`vehicle_agent.agent.Agent`) over small parts named after the
pipeline step: link (MQTT), gate, download_step (verifier: python-tuf, fetcher),
install_step (installer: A/B slots, health), reporting, retrying, journal (saved state),
config. Every I/O part sits behind a small Protocol with an in-memory fake, so the
simulator runs thousands of real agents in one asyncio process.
"""

import sys

# httpx imports its command-line client (click, rich, pygments: about 5 MiB resident)
# whenever those are installed. The agent never uses it and a Pi is short of memory,
# so mark it missing; httpx then skips it (see bench/agent_idle.py for the figures).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
