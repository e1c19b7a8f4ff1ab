"""Business logic: plain functions over a SQLAlchemy session, raising only ``ota_server.errors``."""
