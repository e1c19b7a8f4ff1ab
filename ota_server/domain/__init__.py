"""The campaign's vocabulary and pure rules: car and campaign states, the state machine, the rollout plan.

No database, no clock, no I/O: the schemas, the engine (:mod:`ota_server.rollout`), the services,
the pages and ingest all speak it, and it imports nothing of the server but its errors.
"""
