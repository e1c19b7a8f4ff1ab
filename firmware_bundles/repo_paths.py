"""The HTTP layout of the server's repositories, shared by server routes and agents.

``{repo_url}`` is the base URL a campaign notice carries (e.g. ``http://host:port/repo``).
"""

from __future__ import annotations

IMAGE_METADATA = "image/metadata/"
TARGETS = "image/targets/"
DIRECTOR_METADATA = "director/{vin}/metadata/"


def image_metadata_url(repo_url: str) -> str:
    return f"{repo_url.rstrip('/')}/{IMAGE_METADATA}"


def targets_url(repo_url: str) -> str:
    return f"{repo_url.rstrip('/')}/{TARGETS}"


def director_metadata_url(repo_url: str, vin: str) -> str:
    return f"{repo_url.rstrip('/')}/{DIRECTOR_METADATA.format(vin=vin)}"
