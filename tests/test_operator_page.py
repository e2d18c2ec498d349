"""The operator page ``/_edge/``: sessions, preview logs and the proxy log's header rewrites, safely shown."""

from __future__ import annotations

import time

import aiohttp
import pytest
from yarl import URL

from tests.chromium import PUBLIC_HOST
from tests.fixtures_browser import WatchedPage
from tests.support.upstreams import upstream_app

TOKEN = "operator-test-token-0123456789"
SCRIPT = '"><script>alert(1)</script>'
NAVIGATE = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "same-origin"}


async def proxied_session(edge, serve, **overrides):
    """An edge with session ``s1`` routed to a real upstream, after a proxied redirect whose Location holds markup."""
    upstream = await serve(upstream_app())
    server = await edge(**overrides)
    auth = {"Authorization": f"Bearer {overrides['api_token']}"} if overrides.get("api_token") else {}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.post(server.url("/api/routes/s1"), json={"target": upstream.origin}, headers=auth) as resp:
            assert resp.status == 201
        url = URL(server.url("/session/s1/redirect")).with_query({"to": "/next" + SCRIPT, "token": "secret-vite-token"})
        async with client.get(url, headers={"Host": PUBLIC_HOST}, allow_redirects=False) as resp:
            assert resp.status == 302
    return server, upstream


async def get(url: str, **headers: str) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.get(url, headers=headers, allow_redirects=False) as resp:
            return resp.status, await resp.text(), dict(resp.headers)


async def test_the_page_lists_routes_and_the_header_rewrites_escaped(edge, serve):
    server, upstream = await proxied_session(edge, serve)
    status, page, headers = await get(server.url("/_edge/"))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin" and headers["Cache-Control"] == "no-store"
    assert '<a href="/_edge/sessions/s1">' in page  # the session, from the session table
    assert f"ready → http://127.0.0.1:{upstream.port}" in page
    # The proxy record: the Host rewrite and the Location rewrite, escaped, secrets redacted.
    assert f"request rewritten <code>Host: {PUBLIC_HOST} → 127.0.0.1:{upstream.port}</code>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "secret-vite-token" not in page and "token=[redacted]" in page
    assert "<meta http-equiv=\"refresh\"" not in page  # nothing is starting


async def test_the_proxy_log_filters_by_session(edge, serve):
    server, _ = await proxied_session(edge, serve)
    status, page, _ = await get(server.url("/_edge/?session=s1"))
    assert status == 200 and "/session/s1/redirect" in page
    status, page, _ = await get(server.url("/_edge/?session=other"))
    assert status == 200 and "/session/s1/redirect" not in page and "No proxied requests yet." in page
    status, _, _ = await get(server.url("/_edge/?session=../etc"))
    assert status == 400
    status, page, _ = await get(server.url("/_edge/sessions/s1"))
    assert status == 200 and "/session/s1/redirect" in page
    status, _, _ = await get(server.url("/_edge/sessions/nope"))
    assert status == 404
    status, _, headers = await get(server.url("/_edge"))
    assert status == 308 and headers["Location"] == "/_edge/"


async def test_with_a_token_the_page_needs_it_or_the_login_cookie(edge, serve):
    server, _ = await proxied_session(edge, serve, api_token=TOKEN)
    status, body, headers = await get(server.url("/_edge/"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and "s1" not in body
    status, body, headers = await get(server.url("/_edge/"), **NAVIGATE)
    assert status == 303 and headers["Location"] == "/_edge/login" and "s1" not in body
    status, body, _ = await get(server.url("/_edge/sessions/s1"), Authorization="Bearer wrong")
    assert status == 401 and "redirect" not in body
    status, body, _ = await get(server.url("/_edge/"), Authorization=f"Bearer {TOKEN}")
    assert status == 200 and "/_edge/sessions/s1" in body

    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.post(server.url("/_edge/login"), data={"token": "wrong"}, allow_redirects=False) as resp:
            assert resp.status == 401 and "Set-Cookie" not in resp.headers
        async with client.post(server.url("/_edge/login"), data={"token": TOKEN}, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/_edge/"
            set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/_edge" in set_cookie
    assert TOKEN not in set_cookie
    cookie = set_cookie.split(";", 1)[0]

    status, body, _ = await get(server.url("/_edge/"), Cookie=cookie, **NAVIGATE)
    assert status == 200 and "/_edge/sessions/s1" in body
    # Not for a script's fetch (a preview page shares the origin), a frame, a cross-site navigation, or the API.
    for change in ({"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}, {"Sec-Fetch-Dest": "iframe"}, {"Sec-Fetch-Site": "cross-site"}):
        status, body, _ = await get(server.url("/_edge/"), Cookie=cookie, **{**NAVIGATE, **change})
        assert status in (303, 401) and "/_edge/sessions/s1" not in body, change
    status, body, _ = await get(server.url("/_edge/"), Cookie=cookie, Accept="text/html")  # no Fetch Metadata
    assert status == 303
    status, body, _ = await get(server.url("/_edge/login"), Cookie=cookie, Accept="text/html")
    assert status == 200 and "https" in body  # says why the cookie did not count
    status, _, _ = await get(server.url("/api/routes"), Cookie=cookie, **NAVIGATE)
    assert status == 401
    forged = cookie.split("=", 1)[0] + "=" + str(int(time.time()) + 9999) + "." + "0" * 64
    status, _, _ = await get(server.url("/_edge/"), Cookie=forged, **NAVIGATE)
    assert status == 303


@pytest.mark.browser
async def test_an_operator_signs_in_and_reads_the_page_in_chromium(edge, serve, page):
    server, _ = await proxied_session(edge, serve, api_token=TOKEN)
    # Browsers send Fetch Metadata (which the cookie needs) only to https or loopback origins.
    origin = f"http://localhost:{server.port}"
    browser_page = page.page
    await browser_page.goto(origin + "/_edge/")
    assert browser_page.url == origin + "/_edge/login"  # sent to the sign-in form
    await browser_page.fill("input[name=token]", TOKEN)
    await browser_page.click("button")
    await browser_page.wait_for_url(origin + "/_edge/")
    assert await browser_page.locator("a[href='/_edge/sessions/s1']").count() == 1
    assert "Host: " in await browser_page.locator("table").nth(1).inner_text()
    assert page.problems() == [] and page.console_errors == []
    # A preview page's script (same origin) gets nothing, although the browser has the cookie.
    await browser_page.goto(origin + "/session/s1/echo")
    await browser_page.wait_for_function("document.readyState === 'complete'")
    status = await browser_page.evaluate("fetch('/_edge/', {credentials: 'include', redirect: 'manual'}).then(r => r.status)")
    assert status in (0, 401)  # 0: the opaque answer of a refused redirect
    api = await browser_page.evaluate("fetch('/api/routes').then(r => r.status)")
    assert api == 401


@pytest.mark.astro
@pytest.mark.browser
async def test_the_page_shows_a_starting_preview_and_its_log(make_thread, preview_edge, page):
    thread = make_thread("t1")
    edge = await preview_edge()
    code, _, _ = await edge.get(f"/session/{thread.session_id}/", Accept="text/html")
    assert code == 503  # starting now
    browser_page = page.page
    await browser_page.goto(edge.url("/_edge/"))
    assert await browser_page.locator(f"a[href='/_edge/sessions/{thread.session_id}']").count() == 1
    html = await browser_page.content()
    if edge.supervisor.status(thread.session_id)["state"] in ("starting", "installing"):
        assert 'http-equiv="refresh"' in html  # reloads itself while the preview starts
    assert "c1/u1/t1" in html and "thread-t1" in html
    assert page.problems() == []
    await edge.wait_state(thread.session_id, {"ready"})
    # A second tab: the first may be reloading itself right now, and a reload that fires
    # during goto() would abort the navigation.
    session_tab = WatchedPage.watch(await browser_page.context.new_page())
    await session_tab.page.goto(edge.url(f"/_edge/sessions/{thread.session_id}"))
    assert await session_tab.page.locator("p.meta .state").inner_text() == "ready"
    log = await session_tab.page.locator("pre").inner_text()
    assert "starting Astro" in log and "ready in" in log
    assert 'http-equiv="refresh"' not in await session_tab.page.content()
    assert session_tab.problems() == []
