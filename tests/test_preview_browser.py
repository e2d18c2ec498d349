"""End to end in Chromium: a stopped thread's preview appears by itself and edits show live."""

from __future__ import annotations

import pytest

from tests.chromium import PUBLIC_HOST
from tests.fixtures_browser import eventually
from tests.support.polling import wait_until

pytestmark = [pytest.mark.astro, pytest.mark.browser]
DEADLINE = 120.0


async def test_a_stopped_thread_opens_in_chromium_and_edits_show_live(preview_edge, make_thread, page):
    thread = make_thread("t1")
    edge = await preview_edge()
    assert edge.supervisor.get(thread.session_id) is None
    public = f"http://{PUBLIC_HOST}:{edge.server.port}/session/{thread.session_id}/"
    browser_page = page.page

    first = await browser_page.goto(public)
    # The waiting page for site owners (200: a 5xx document is a console error), which opens the site by itself.
    assert first is not None and first.status == 200 and first.headers["x-edge-preview-stage"] in ("installing", "starting")
    await eventually(browser_page, "() => document.querySelector('h1')?.textContent === \"Welcome to Amelia's site\"", "the page")
    await eventually(browser_page, "() => true", "a settled page")
    assert edge.supervisor.status(thread.session_id)["state"] == "ready"

    def hmr_open() -> bool:
        return any("?token=" in ws.url and not ws.is_closed() for ws in page.websockets)

    def hmr_connected() -> bool:
        return hmr_open() and any("[vite] connected" in m for m in page.document_console())

    await wait_until(hmr_connected, "the HMR socket to connect", DEADLINE, interval=0.1)
    page.clear()

    h1_color = "() => getComputedStyle(document.querySelector('h1')).color"
    css = thread.path / "src" / "styles" / "global.css"
    await browser_page.evaluate("() => { window.__beforeCss = true; }")
    css.write_text(css.read_text().replace("rgb(1, 2, 3)", "rgb(200, 30, 40)"))
    await eventually(browser_page, f"() => ({h1_color})() === 'rgb(200, 30, 40)'", "the CSS edit")
    if await browser_page.evaluate("() => window.__beforeCss") is None:
        # Astro 5 reloads the page for this edit: the next edit needs the new page's HMR socket.
        await wait_until(hmr_connected, "the HMR socket to reconnect after the reload", DEADLINE, interval=0.1)

    index = thread.path / "src" / "pages" / "index.astro"
    index.write_text(index.read_text().replace("Welcome to Amelia's site", "Edited live by Claude"))
    await eventually(browser_page, "() => document.querySelector('h1')?.textContent === 'Edited live by Claude'", "the text edit")

    assert await browser_page.evaluate(h1_color) == "rgb(200, 30, 40)"
    assert browser_page.url == public  # never a manual reload or another address

    # Astro 5 answers these edits with a full reload, which aborts module loads still in flight.
    assert [p for p in page.problems() if "net::ERR_ABORTED" not in p] == []
    assert hmr_open()

    # Stopping the preview closes its HMR socket; Vite's client pings until the edge has
    # started the preview again (on demand) and then reloads the page by itself.
    await browser_page.evaluate("() => { window.__beforeStop = true; }")
    status, _ = await edge.api("POST", "stop", thread)
    assert status == 200
    await eventually(
        browser_page,
        "() => window.__beforeStop === undefined && document.querySelector('h1')?.textContent === 'Edited live by Claude'",
        "the page to come back after the stop",
        context=lambda: f"preview {edge.supervisor.status(thread.session_id)}; console {page.console_messages[-15:]}",
    )
    assert edge.supervisor.status(thread.session_id)["state"] == "ready"
    assert browser_page.url == public
