"""Headless Chromium for the browser tests, through Playwright's sync API.

Playwright launches the system's Chromium (CHROMIUM, or the first of NAMES on
PATH) and never downloads a browser of its own. Without one the browser tests
are skipped, unless REQUIRE_BROWSER=1 (as in CI), when they fail.

The tests use the browser's own default context, attached over the DevTools
protocol with `no_defaults`: Playwright's contexts emulate focus in every page,
which keeps `document.visibilityState` "visible" for good, while in the default
context the pages are tabs of one window, and only the tab in front is visible,
as in a desktop browser. `page.bring_to_front()` switches tabs.

    with open_tabs() as tabs:
        page = new_tab(tabs)
        page.goto("http://127.0.0.1:8000/dashboard")
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import Request
from playwright.sync_api import Route
from playwright.sync_api import sync_playwright

from bench.common import free_port

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executables tried, in order, when CHROMIUM does not name one."""

FLAGS = (
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-dev-shm-usage", "--mute-audio",
)
"""Chromium's flags besides Playwright's own (which add --headless): no sandbox, no network of its own."""

VIEWPORT = {"width": 1280, "height": 900}
"""The size of every page."""

TIMEOUT_MS = 10_000
"""How long a page's waits and actions may take before they fail."""


def find_chromium() -> str | None:
    """The Chromium executable: $CHROMIUM, else the first of NAMES on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    return next((path for path in map(shutil.which, NAMES) if path), None)


@contextmanager
def open_tabs() -> Iterator[BrowserContext]:
    """The default context of a fresh headless Chromium, its pages tabs of one window (for a fixture)."""
    path = find_chromium()
    if path is None:
        message = "Chromium not found (apt-get install chromium, or set CHROMIUM to its path)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; REQUIRE_BROWSER=1")
        pytest.skip(message)
    port = free_port()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=path, args=[*FLAGS, f"--remote-debugging-port={port}"])
        try:
            yield playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}", no_defaults=True).contexts[0]
        finally:
            browser.close()


def new_tab(tabs: BrowserContext) -> Page:
    """A new tab, in front, of the tests' size, whose waits fail after TIMEOUT_MS."""
    page = tabs.new_page()
    page.set_viewport_size(VIEWPORT)
    page.set_default_timeout(TIMEOUT_MS)
    return page


def wait_until(page: Page, expression: str, timeout: float = TIMEOUT_MS):
    """Wait until a JavaScript expression is truthy in `page` and return its value.

    The expression goes in as a function: Playwright evaluates a bare string with
    `eval`, which the dashboard's Content-Security-Policy forbids.
    """
    return page.wait_for_function(f"() => ({expression})", timeout=timeout).json_value()


def collect_errors(page: Page) -> list[str]:
    """A list that fills with what `page` reports: console errors (CSP violations and failed loads among them)
    and uncaught exceptions."""
    reported: list[str] = []
    page.on("console", lambda message: reported.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: reported.append(str(error)))
    return reported


class Traffic:
    """A page's requests to paths that start with `prefix`, as the browser's network sees them.

    Counts the requests in flight at once (from the page's request, finished and
    failed events) and, with `hold=True`, holds each one at the browser's network
    (`page.route`) in `held` until the test answers it or sends it on to the server.
    """

    def __init__(self, page: Page, prefix: str = "/api/", hold: bool = False):
        self.page = page
        self.prefix = prefix
        self.sent: list[tuple[float, Request]] = []
        self.ended: dict[Request, float] = {}
        self.held: list[tuple[float, Route]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)
        if hold:
            page.route(self._matches, lambda route: self.held.append((time.monotonic(), route)))

    def _matches(self, url: str) -> bool:
        return urlsplit(url).path.startswith(self.prefix)

    def _started(self, request: Request) -> None:
        if self._matches(request.url):
            self.sent.append((time.monotonic(), request))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def _ended(self, request: Request) -> None:
        if self._matches(request.url):
            self.ended[request] = time.monotonic()
            self.in_flight -= 1

    def run(self, seconds: float, delay: float = 0.0, until=None, what: str = "") -> None:
        """Let the page run for `seconds`, or until `until()` is true, sending each held request on once
        it was held `delay` seconds; fails when `until` is never true (saying `what` was awaited)."""
        end = time.monotonic() + seconds
        while not (until and until()):
            if time.monotonic() > end:
                if until:
                    raise AssertionError(f"not within {seconds} s: {what}")
                return
            self.page.wait_for_timeout(20)
            ready = [item for item in self.held if time.monotonic() - item[0] >= delay]
            for item in ready:
                self.held.remove(item)
                item[1].continue_()
