"""The OTA recall server: fleet REST API, TUF signing, MQTT campaign notices and report ingest.

Nothing is created at import time; build an application with
:func:`ota_server.http.app.create_app` from a :class:`ota_server.config.Settings`.
"""
