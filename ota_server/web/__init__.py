"""The web dashboard: campaign pages updating live, customer care's VIN timeline, the owner's look-up.

Plain HTML shells, one small script and one stylesheet shipped as package data (no CDN,
no build step); charts are inline SVG drawn by the script. :func:`install` mounts it on
the app built by :func:`ota_server.http.app.create_app`.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from ota_server.clock import Clock
from ota_server.config import Settings
from ota_server.web import api, owner, pages
from ota_server.web.lookup import AddressBuckets
from ota_server.web.sse import EventStreams

STATIC_PATH = "/ui/static"


def install(app: FastAPI, settings: Settings, clock: Clock) -> None:
    app.state.lookup_limiter = AddressBuckets(settings.lookup_rate_per_min, settings.lookup_burst, clock)
    app.state.event_streams = EventStreams()
    app.include_router(api.router)
    app.include_router(api.public)
    app.include_router(pages.router)
    app.include_router(owner.router)
    static = resources.files("ota_server.web").joinpath("static")
    app.mount(STATIC_PATH, StaticFiles(directory=str(static)), name="web-static")


def event_streams(app: FastAPI) -> EventStreams:
    """The app's open dashboard streams; the server closes them first when it stops."""
    streams: EventStreams = app.state.event_streams
    return streams
