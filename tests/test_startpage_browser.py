"""The page a site owner sees while a preview installs and starts, in Chromium (edge/startpage.py)."""

from __future__ import annotations

import json
import shutil

import pytest
from playwright.async_api import Error as PlaywrightError

from tests.chromium import PUBLIC_HOST
from tests.fixtures_browser import WatchedPage, secure_browser
from tests.support.polling import wait_until

pytestmark = [pytest.mark.astro, pytest.mark.browser]
DEADLINE = 150.0
STAGE = "() => document.body?.dataset.stage || (document.querySelector('h1')?.textContent ?? '')"


async def watch_stages(watched: WatchedPage, until: str, timeout: float = DEADLINE) -> list[str]:
    """Every stage (or, once the site is there, its heading) the page showed, until ``until`` appears."""
    seen: list[str] = []

    async def shown() -> bool:
        try:
            value = await watched.page.evaluate(STAGE)
        except PlaywrightError:
            value = None  # between the waiting page and the site
        if value and (not seen or seen[-1] != value):
            seen.append(value)
        return value == until

    await wait_until(
        shown,
        f"the page to show {until!r}",
        timeout,
        interval=0.1,
        detail=lambda: f"saw {seen}; console {watched.console_messages[-10:]}",
    )
    return seen


async def test_the_waiting_page_shows_the_stage_and_opens_the_site_quietly(preview_edge, make_thread):
    thread = make_thread("t1")
    shutil.rmtree(thread.path / "node_modules")  # the first start installs: every stage shows
    # Starting lasts longer than the page's poll (2 s), so the page sees it however fast Astro starts.
    package = json.loads((thread.path / "package.json").read_text())
    package.setdefault("scripts", {})["dev"] = "sleep 4 && astro dev"
    (thread.path / "package.json").write_text(json.dumps(package))
    edge = await preview_edge()
    # A machine gets 503 and Retry-After (and starts the preview).
    status, body, headers = await edge.get(f"/session/{thread.session_id}/", Accept="application/json")
    assert status == 503 and headers["Retry-After"] == "2" and json.loads(body)["state"] == "starting"
    origin = f"http://{PUBLIC_HOST}:{edge.server.port}"
    async with secure_browser(origin) as browser:
        context = await browser.new_context()
        watched = WatchedPage.watch(await context.new_page())
        await watched.page.goto(f"{origin}/session/{thread.session_id}/")
        seen = await watch_stages(watched, "Welcome to Amelia's site")
        waiting = [stage for stage in seen if stage in ("installing", "starting")]
        assert waiting[:1] == ["installing"] and "starting" in waiting, seen
        assert watched.problems() == [], [(r.url, r.status) for r in watched.responses if r.status >= 400]  # nothing logged while it waited
        documents = [r for r in watched.responses if r.request.resource_type == "document"]
        assert all(r.status == 200 for r in documents), [(r.url, r.status) for r in documents]
        await context.close()


async def test_a_failed_start_says_what_to_do(preview_edge, make_thread):
    thread = make_thread("t1")
    shutil.rmtree(thread.path / "node_modules")
    (thread.path / "package.json").write_text("{ not json")  # the install cannot even begin
    edge = await preview_edge()
    origin = f"http://{PUBLIC_HOST}:{edge.server.port}"
    async with secure_browser(origin) as browser:
        context = await browser.new_context()
        watched = WatchedPage.watch(await context.new_page())
        await watched.page.goto(f"{origin}/session/{thread.session_id}/")
        await watch_stages(watched, "failed", timeout=60)
        text = await watched.page.inner_text("body")
        assert "dependencies failed" in text and "lock file" in text
        assert not await watched.page.is_visible("#steps")  # the progress steps are gone
        assert await watched.page.is_visible("#retry")
        for noise in (str(thread.path), "/tmp/", "npm ", "NODE_BINARY", "Traceback", "503"):
            assert noise not in text, noise
        assert watched.problems() == []
        await context.close()

    # Machines still get the status code and Retry-After (503 while starting, 502 failed).
    status, body, headers = await edge.get(f"/session/{thread.session_id}/", Accept="application/json")
    assert status == 502 and json.loads(body)["state"] == "failed"
