"""The campaign engine: the coordinator running ticks, each campaign's rollout rules, the one writer of car states.

``coordinator`` runs and coalesces ticks; ``campaign_tick`` applies one campaign's rules
(joiners, timeouts, gates and waves, retries, completion), ``notifying`` picks and notifies
the next cars, ``rollback`` launches rollback campaigns; ``transitions`` is the only writer
of a campaign car's state and events. The states and the plan's pure rules are
:mod:`ota_server.domain`'s; what the engine needs of the services is the ``fleet`` port.
"""
