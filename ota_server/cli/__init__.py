"""The ``ota`` command: ``main`` assembles the groups; every operator command speaks to the REST API."""
