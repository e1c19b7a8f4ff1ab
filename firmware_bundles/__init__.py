"""The contract shared by the OTA server and the vehicle agent.

No network or database code lives here: only the bundle format, the Uptane/TUF
metadata helpers, the wire messages, the MQTT topic scheme and the typed errors.
"""
