"""Fixtures for a real headless Chromium (Debian's), driven by Playwright's async API.

Chromium resolves the public preview names to 127.0.0.1 (``--host-resolver-rules``),
so a test opens ``http://edit.amelia.webordinary.com:<edge port>/session/<id>/``
exactly as a site owner's browser would, and reaches the local edge.
Playwright never downloads a browser here: it launches /usr/bin/chromium.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import pytest
from playwright.async_api import Browser, ConsoleMessage, Frame, Page, Request, Response, WebSocket, async_playwright
from playwright.async_api import Error as PlaywrightError

from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.fixtures_astro import require
from tests.support.polling import wait_until


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian Chromium; closed after the test."""
    require(CHROMIUM.exists(), f"{CHROMIUM} is not installed")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@asynccontextmanager
async def secure_browser(origin: str) -> AsyncIterator[Browser]:
    """Chromium that treats ``origin`` (plain http on the public name) as the https it is in production.

    Service workers and Fetch Metadata exist only in secure contexts; without
    this flag Chromium would see the public name over http as insecure.
    """
    require(CHROMIUM.exists(), f"{CHROMIUM} is not installed")
    async with async_playwright() as playwright:
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"]
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class WatchedPage:
    """A page plus what went wrong on it: console errors, failed requests, 4xx/5xx answers."""

    page: Page
    console_messages: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[str] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    websockets: list[WebSocket] = field(default_factory=list)
    document_start: int = 0  # where the current document's messages begin in console_messages

    def problems(self) -> list[str]:
        """Everything that should not happen on a healthy preview page."""
        return self.console_errors + self.failed_requests + self.error_responses

    def clear(self) -> None:
        """Forget what was recorded so far (before the next step of a test)."""
        for recorded in (self.console_messages, self.console_errors, self.failed_requests, self.error_responses, self.responses):
            recorded.clear()
        self.document_start = 0

    def document_console(self) -> list[str]:
        """The console messages of the page's current document (since its navigation, or the last clear)."""
        return self.console_messages[self.document_start :]

    @classmethod
    def watch(cls, page: Page) -> "WatchedPage":
        """Start recording what goes wrong on ``page``."""
        watched = cls(page)
        page.on("console", watched._on_console)
        page.on("pageerror", lambda error: watched.console_errors.append(f"page error: {error}"))
        page.on("requestfailed", watched._on_request_failed)
        page.on("response", watched._on_response)
        page.on("websocket", watched._on_websocket)
        page.on("framenavigated", lambda frame: watched._on_navigated(frame, page))
        return watched

    def _on_navigated(self, frame: Frame, page: Page) -> None:
        if frame == page.main_frame:
            self.document_start = len(self.console_messages)

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console_messages.append(message.text)
        if message.type == "error":
            self.console_errors.append(f"console: {message.text}")

    def _on_request_failed(self, request: Request) -> None:
        self.failed_requests.append(f"failed: {request.method} {request.url} ({request.failure})")

    def _on_websocket(self, websocket: WebSocket) -> None:
        self.websockets.append(websocket)

    def _on_response(self, response: Response) -> None:
        self.responses.append(response)
        if response.status >= 400:
            self.error_responses.append(f"HTTP {response.status}: {response.request.method} {response.url}")


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[WatchedPage]:
    """A fresh browser context and page that records console errors and failed requests."""
    context = await browser.new_context()
    watched = WatchedPage.watch(await context.new_page())
    try:
        yield watched
    finally:
        await context.close()


async def eventually(
    page: Page, script: str, what: str, timeout: float = 120.0, context: Callable[[], object] = lambda: ""
) -> Any:
    """Evaluate ``script`` until it returns something truthy, across reloads and navigations;
    on timeout say ``what``, the last value and ``context()``."""
    last = None

    async def value() -> Any:
        nonlocal last
        try:
            last = await page.evaluate(script)
        except PlaywrightError:
            return None  # the page navigated (the starting page refreshes itself; Vite reloads)
        return last

    return await wait_until(value, what, timeout, interval=0.2, detail=lambda: f"last value {last!r}; {context()}")
