"""Server events for other systems (webhooks): written to the ``outbox_events`` table in the
transaction of the change that causes them, so an event is never lost and never sent for a
change that rolled back. See :mod:`ota_server.events.outbox` and ``docs/webhooks.md``.

Below both the engine (``rollout``) and the services: it imports only ``db`` and ``domain``.
"""
