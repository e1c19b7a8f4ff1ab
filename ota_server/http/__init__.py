"""The server process: the ASGI app and its lifespan, the runtime it owns, the socket, the repositories over HTTP."""
