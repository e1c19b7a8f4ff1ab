"""HTTP layer: thin routers over the services, and the one place errors become status codes."""
