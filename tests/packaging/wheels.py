"""Build the repository's own wheels (packaging/*/pyproject.toml) and read their metadata."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = {
    "ota-firmware-bundles": ROOT / "packaging" / "firmware-bundles",
    "ota-vehicle-agent": ROOT / "packaging" / "vehicle-agent",
    "ota-server": ROOT / "packaging" / "ota-server",
}
# What a car must never carry: the server's web, database, broker, report and metrics stack.
SERVER_ONLY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psycopg-binary",
    "amqtt",
    "fpdf2",
    "prometheus-client",
)


def build(out: Path, *names: str) -> dict[str, Path]:
    """``pip wheel --no-deps`` of the named projects into ``out``; name -> wheel file."""
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out)]
    subprocess.run([*command, *(str(PROJECTS[n]) for n in names)], check=True, timeout=600, capture_output=True)
    return {name: next(out.glob(f"{name.replace('-', '_')}-*.whl")) for name in names}


def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(archive.read(name).decode())


def files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def entry_points(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        return archive.read(names[0]).decode() if names else ""
