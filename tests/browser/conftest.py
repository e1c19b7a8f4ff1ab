"""A real browser (Debian's chromium driven by Playwright) against a real server process.

Never ``playwright install``: the Python package ships its own driver, and the browser is
the distribution's ``/usr/bin/chromium`` (``make test`` installs it when missing and
apt-get is usable as root). Without it the tests skip, except with
``OTA_REQUIRE_SERVICES=1`` (CI), where they fail.

Full-page screenshots go to ``test-artifacts/browser/``; with ``OTA_UPDATE_SCREENSHOTS=1``
(``make screenshots``) they are also copied to ``docs/screenshots/`` (through ``pngquant``
when it is installed, to keep the committed PNGs small).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.services import required

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path(os.environ.get("OTA_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}  # a laptop


def _unavailable(reason: str) -> None:
    if required():
        pytest.fail(f"{reason} and OTA_REQUIRE_SERVICES=1: the browser tests must run here", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The browser binary, checked before anything expensive (a server, a fleet) starts."""
    if not CHROMIUM.exists():
        _unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium, or `make test` as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot kept as a test artefact (and for the docs when asked)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("OTA_UPDATE_SCREENSHOTS", "") not in ("", "0"):
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = DOCS_SCREENSHOTS / path.name
        shutil.copyfile(path, target)
        if shutil.which("pngquant"):  # a palette PNG is a third of the size and looks the same here
            subprocess.run(["pngquant", "--force", "--skip-if-larger", "--output", str(target), str(path)], check=False)
    return path


class PageProblems:
    """Console errors (a CSP violation is one), uncaught script errors, and requests leaving the server."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self._base = base_url.rstrip("/")
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _request(self, request: Any) -> None:
        url = str(request.url)
        if not (url.startswith(self._base + "/") or url.startswith("data:")):
            self.foreign.append(url)
