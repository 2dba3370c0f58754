"""The portal's browser suite: a real ``brainmap serve`` of the demo's data, driven by Debian's Chromium.

The data: the demo's specimens as CI's first command leaves them (``./brainmap-demo/specimens``), loaded with
``brainmap load`` into a fresh data directory; where they are absent or incomplete the demo runs first, in a
temporary folder. The server is ``brainmap serve`` on a free loopback port (one worker). The browser is
Playwright for Python driving ``/usr/bin/chromium`` (installed by ``.ci/run`` from Debian; Playwright's own
browser download is never used): the suite skips, saying why, where either is missing.

Screenshots go to ``test-artefacts/portal/`` in the project (git-ignored), or ``$BRAINMAP_ARTEFACTS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("BRAINMAP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DEMO_FOLDERS = 6
ARTEFACTS = Path(os.environ.get("BRAINMAP_ARTEFACTS", ROOT / "test-artefacts")) / "portal"


def _run(args: list[str], cwd: Path) -> None:
    done = subprocess.run([str(BIN / "brainmap"), *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"brainmap {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def _complete(specimens: Path) -> bool:
    folders = [f for f in specimens.glob("*") if (f / "dataset.json").is_file()]
    return len(folders) >= DEMO_FOLDERS and all((f / "pipeline").is_dir() for f in folders)


@pytest.fixture(scope="session")
def empty_portal(tmp_path_factory, brainmap_serve) -> Iterator[str]:
    """A ``brainmap serve`` of an empty data directory."""
    here = tmp_path_factory.mktemp("empty")
    (here / "data").mkdir()
    with brainmap_serve(["serve", "--data-dir", str(here / "data")], here) as base:
        yield base


@pytest.fixture(scope="session")
def portal_dir(tmp_path_factory) -> Path:
    """The folder of the served portal: its data directory is ``data/``."""
    return tmp_path_factory.mktemp("portal")


@pytest.fixture(scope="session")
def portal(portal_dir, brainmap_serve) -> Iterator[str]:
    """The base URL of a ``brainmap serve`` of the demo's data (stopped at the end of the session)."""
    here = portal_dir
    specimens = ROOT / "brainmap-demo" / "specimens"
    if not _complete(specimens):
        _run(["demo"], here)
        specimens = here / "brainmap-demo" / "specimens"
    _run(["load", str(specimens), "--data-dir", str(here / "data")], here)
    with brainmap_serve(["serve", "--data-dir", str(here / "data")], here) as base:
        yield base


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium under Playwright (skips, saying why, where either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser suite needs playwright (pip, test "
                                                                 "extras)")
    if not CHROMIUM.exists():
        pytest.skip(f"the browser suite needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page whose console errors, failed requests and 4xx/5xx answers are recorded (``problems``), and which
    refuses any request to another host."""

    def __init__(self, page, base: str):
        self.page = page
        self.base = base
        self.problems: list[str] = []
        self.allowed_errors: set[int] = set()
        self._inflight: set = set()
        self._last = time.monotonic()
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)
        page.on("console", lambda m: m.type == "error" and not self._allowed(m.text)
                and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        #: URL parts whose requests may be cancelled by the page itself (Neuroglancer drops chunks it no longer
        #: needs and reopens its event stream).
        self.may_abort: tuple[str, ...] = ()
        page.on("requestfailed", lambda r: not (r.failure == "net::ERR_ABORTED" and any(
            part in r.url for part in self.may_abort)) and self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and r.status not in self.allowed_errors
                and self.problems.append(f"{r.status}: {r.url}"))

        def route(request_route):
            if request_route.request.url.startswith(base) or request_route.request.url.startswith("data:"):
                request_route.continue_()
            else:
                self.problems.append(f"request to another host: {request_route.request.url}")
                request_route.abort()

        page.route("**/*", route)

    def _allowed(self, text: str) -> bool:
        """A console line about an answer whose status the test expects (a page saying what was wrong)."""
        return any(f"status of {code}" in text for code in self.allowed_errors)

    def _started(self, request) -> None:
        self._inflight.add(request)
        self._last = time.monotonic()

    def _ended(self, request) -> None:
        self._inflight.discard(request)
        self._last = time.monotonic()

    def settle(self, quiet_s: float = 0.15, timeout_s: float = 30.0) -> None:
        """Wait until no request has been in flight for ``quiet_s`` (Playwright's "networkidle" waits 0.5 s,
        which over a suite's hundred page loads is most of its time)."""
        deadline = time.monotonic() + timeout_s
        while self._inflight or time.monotonic() - self._last < quiet_s:
            if time.monotonic() > deadline:
                raise AssertionError(f"requests still in flight after {timeout_s} s: "
                                     f"{sorted(r.url for r in self._inflight)}")
            self.page.wait_for_timeout(25)

    def goto(self, path: str) -> None:
        """Open a page (its load event), then wait for the requests its scripts make to end."""
        self.page.goto(self.base + path)
        self.settle()

    def click(self, selector: str) -> None:
        """Click what opens another page, then wait for that page and its scripts' requests."""
        with self.page.expect_navigation():
            self.page.click(selector)
        self.settle()

    def shot(self, name: str) -> Path:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTEFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def clean(self) -> None:
        problems, self.problems = self.problems, []
        assert not problems, "\n".join(problems)


@pytest.fixture
def web(browser, portal, artefacts) -> Iterator[Watched]:
    """A fresh page at a laptop's size (1366 x 900) on the served portal."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    watched = Watched(page, portal)
    try:
        yield watched
    finally:
        context.close()


@pytest.fixture(scope="session")
def artefacts() -> Path:
    """The folder of the suite's screenshots (emptied at the start of the session)."""
    shutil.rmtree(ARTEFACTS, ignore_errors=True)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    return ARTEFACTS
