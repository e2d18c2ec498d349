"""Two previews in two tabs of one Chromium context never mix (prefix mode: edge/prefixing.py, Referer routing).

The routing cookie is per browser, so by the cookie alone the tab opened last
would answer the other tab's root-absolute requests (module updates, CSS,
links). Here each tab's every response comes from its own session, an HMR CSS
edit of thread 1 shows in tab 1 and never in tab 2, and a root-absolute link
in tab 1 stays in thread 1, also after tab 2 reloads.
"""

from __future__ import annotations

import pytest

from tests.chromium import PUBLIC_HOST
from tests.fixtures_browser import WatchedPage, eventually, secure_browser
from tests.support.polling import wait_until

pytestmark = [pytest.mark.astro, pytest.mark.browser]
DEADLINE = 120.0
H1_COLOR = "() => getComputedStyle(document.querySelector('h1')).color"
H1_TEXT = "() => document.querySelector('h1')?.textContent"


async def hmr_connected(watched: WatchedPage, session_id: str) -> None:
    """Wait until the current page's Vite client is connected, through its own session's prefix.

    Only the current document's messages count: the page before a navigation had logged
    "[vite] connected" too, and an edit made on its word raced the new page's socket and was
    missed (the two-tab test failed about 1 run in 5).
    """

    def connected() -> bool:
        sockets = [ws for ws in watched.websockets if "?token=" in ws.url and not ws.is_closed()]
        if sockets and any("[vite] connected" in m for m in watched.document_console()):
            assert all(f"/session/{session_id}/?token=" in ws.url for ws in sockets), [ws.url for ws in sockets]
            return True
        return False

    await wait_until(
        connected, "the HMR socket to connect", DEADLINE, interval=0.1, detail=lambda: watched.console_messages[-10:]
    )


def foreign_responses(watched: WatchedPage, origin: str, session_id: str) -> list[str]:
    """Responses from the edge that did not come from ``session_id`` (or, the edge's 307s, lead elsewhere)."""
    wrong = []
    for response in watched.responses:
        if not response.url.startswith(origin):
            continue
        if response.status == 307 and response.headers.get("location", "").startswith(f"/session/{session_id}/"):
            continue
        got = response.headers.get("x-edge-session")
        if got != session_id:
            wrong.append(f"{response.url} -> {got}")
    return wrong


async def test_two_sessions_in_one_context_stay_apart(preview_edge, make_thread):
    one = make_thread("t1")
    two = make_thread("t2")
    # Thread 2 is told apart by its heading, its colour and its about page.
    for path, old, new in (
        ("src/pages/index.astro", "Welcome to Amelia's site", "Welcome to Bea's site"),
        ("src/styles/global.css", "rgb(1, 2, 3)", "rgb(4, 5, 6)"),
        ("src/pages/about.astro", "About Amelia", "About Bea"),
    ):
        file = two.path / path
        file.write_text(file.read_text().replace(old, new))
    edge = await preview_edge()
    for thread in (one, two):
        status, body = await edge.api("POST", "start", thread, wait="120")
        assert status == 200, body

    origin = f"http://{PUBLIC_HOST}:{edge.server.port}"
    async with secure_browser(origin) as browser:
        await two_tabs(edge, browser, origin, one, two)


async def two_tabs(edge, browser, origin: str, one, two) -> None:
    url_one, url_two = (f"{origin}/session/{t.session_id}/" for t in (one, two))
    context = await browser.new_context()
    try:
        tab1 = WatchedPage.watch(await context.new_page())
        tab2 = WatchedPage.watch(await context.new_page())

        first = await tab1.page.goto(url_one)
        assert first is not None and first.status == 200  # the page itself, at once
        await eventually(tab1.page, f"() => ({H1_TEXT})() === \"Welcome to Amelia's site\"", "tab 1's page")
        await tab2.page.goto(url_two)
        await eventually(tab2.page, f"() => ({H1_TEXT})() === \"Welcome to Bea's site\"", "tab 2's page")
        await hmr_connected(tab1, one.session_id)
        await hmr_connected(tab2, two.session_id)

        # Every request of each tab (document, /@vite/client, modules, CSS, the logo) reached its own session,
        # and the page and its modules asked for them under the prefix (the edge gave their URLs the prefix).
        for tab, thread in ((tab1, one), (tab2, two)):
            urls = [r.url[len(origin):] for r in tab.responses if r.url.startswith(origin)]
            assert f"/session/{thread.session_id}/@vite/client" in urls
            assert any(url.startswith(f"/session/{thread.session_id}/src/") for url in urls)
            assert f"/session/{thread.session_id}/logo.svg" in urls
            assert [url for url in urls if not url.startswith(f"/session/{thread.session_id}/")] == []
        assert foreign_responses(tab1, origin, one.session_id) == []
        assert foreign_responses(tab2, origin, two.session_id) == []
        # fetch() from the page at a root path (no rewrite reaches it): its Referer names the tab's session.
        assert await tab1.page.evaluate("async () => (await fetch('/about')).headers.get('x-edge-session')") == one.session_id
        assert await tab2.page.evaluate("async () => (await fetch('/about')).headers.get('x-edge-session')") == two.session_id
        # An image the page adds at run time at a root path too.
        added = "() => new Promise((done) => { const i = new Image(); i.onload = () => done(i.naturalWidth); i.onerror = () => done(-1); i.src = '/logo.svg?added'; })"
        assert await tab1.page.evaluate(added) > 0
        assert any(r.url.endswith("/logo.svg?added") and r.headers.get("x-edge-session") == one.session_id for r in tab1.responses)

        # Vite's client builds its socket URL (HMR and ping) under the tab's own prefix.
        client = await tab1.page.evaluate(f"async () => (await fetch('/session/{one.session_id}/@vite/client')).text()")
        assert f'{{"/session/{one.session_id}/"}}`;' in client

        # An HMR CSS edit in thread 1 shows in tab 1 and never in tab 2.
        assert await tab1.page.evaluate(H1_COLOR) == "rgb(1, 2, 3)"
        assert await tab2.page.evaluate(H1_COLOR) == "rgb(4, 5, 6)"
        css = one.path / "src" / "styles" / "global.css"
        css.write_text(css.read_text().replace("rgb(1, 2, 3)", "rgb(200, 30, 40)"))
        await eventually(tab1.page, f"() => ({H1_COLOR})() === 'rgb(200, 30, 40)'", "the CSS edit in tab 1")
        assert await tab2.page.evaluate(H1_COLOR) == "rgb(4, 5, 6)"

        # A root-absolute link in tab 1 stays in thread 1.
        await hmr_connected(tab1, one.session_id)
        await tab1.page.click("#about-link")
        await eventually(tab1.page, f"() => ({H1_TEXT})() === 'About Amelia'", "thread 1's about page in tab 1")
        assert tab1.page.url == f"{url_one}about"

        # Tab 2 reloads (the cookie now names thread 2): tab 1 still gets only thread 1.
        await tab2.page.reload()
        await eventually(tab2.page, f"() => ({H1_TEXT})() === \"Welcome to Bea's site\"", "tab 2 after its reload")
        await tab1.page.go_back()
        await eventually(tab1.page, f"() => ({H1_TEXT})() === \"Welcome to Amelia's site\"", "tab 1 back home")
        tab1.clear()
        # A link the page adds at run time (no rewrite reached it): its Referer keeps it in thread 1.
        await tab1.page.evaluate(
            "() => { const a = document.createElement('a'); a.id = 'runtime-link'; a.href = '/about'; a.textContent = 'About';"
            " document.body.append(a); }"
        )
        await tab1.page.click("#runtime-link")
        await eventually(tab1.page, f"() => ({H1_TEXT})() === 'About Amelia'", "thread 1's about page after tab 2's reload")
        assert tab1.page.url == f"{url_one}about"
        await hmr_connected(tab1, one.session_id)
        css.write_text(css.read_text().replace("rgb(200, 30, 40)", "rgb(10, 120, 10)"))
        await eventually(
            tab1.page,
            f"() => ({H1_COLOR})() === 'rgb(10, 120, 10)'",
            "a second CSS edit in tab 1",
            context=lambda: f"tab 1's console: {tab1.console_messages[-15:]}",
        )
        assert await tab2.page.evaluate(H1_COLOR) == "rgb(4, 5, 6)"
        assert foreign_responses(tab1, origin, one.session_id) == []
        assert foreign_responses(tab2, origin, two.session_id) == []
        problems = [p for p in tab1.problems() + tab2.problems() if "net::ERR_ABORTED" not in p]
        assert problems == []

        # Thread 1's dev server stops: its HMR socket closes, Vite pings through tab 1's own prefix
        # (thread 2's server would answer a root ping at once) and the page comes back by itself.
        await tab1.page.evaluate("() => { window.__beforeStop = true; }")
        status, _ = await edge.api("POST", "stop", one)
        assert status == 200
        await eventually(
            tab1.page,
            "() => window.__beforeStop === undefined && document.querySelector('h1')?.textContent === 'About Amelia'",
            "tab 1 to come back after the stop",
        )
        assert tab1.page.url == f"{url_one}about"
        assert await tab2.page.evaluate(f"() => ({H1_TEXT})()") == "Welcome to Bea's site"
    finally:
        await context.close()
