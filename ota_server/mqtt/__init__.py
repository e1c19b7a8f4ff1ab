"""The cars' side over MQTT: the link, notices out, status messages in (ingest), the broker and its certificates."""
