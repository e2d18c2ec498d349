"""The tab worker's edge side: which navigations get the bootstrap page, and the worker script itself.

The browser side (two tabs, HMR, links) is tested in Chromium in test_tabs_browser.py.
"""

from __future__ import annotations

import aiohttp
import pytest

from edge.tabs import WORKER_PATH
from tests.support.routes import post_route
from tests.support.upstreams import SEEN, upstream_app

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html"}


@pytest.fixture
async def one_session(edge, serve):
    upstream = await serve(upstream_app())
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    return server, upstream


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def test_a_navigation_no_worker_controls_gets_the_bootstrap_page(one_session, client):
    server, upstream = one_session
    async with client.get(server.url("/session/abc/page"), headers=NAVIGATE) as resp:
        body = await resp.text()
        assert resp.status == 200
        assert resp.headers["X-Edge-Tab-Bootstrap"] == "1"
        assert resp.headers["Cache-Control"] == "no-store"
        assert f'register(worker, {{ scope: "/" }})' in body and f'"{WORKER_PATH}"' in body
        assert '"/session/abc/"' in body
    assert upstream.app[SEEN] == []  # nothing reached the dev server


@pytest.mark.parametrize(
    "headers",
    [
        {**NAVIGATE, "Service-Worker-Navigation-Preload": "true"},  # the worker controls the tab
        {**NAVIGATE, "X-Edge-Tab": "1"},  # the worker forwards it without navigation preload
        {**NAVIGATE, "Cookie": "a=1; edge_tabs=off"},  # the browser could not run the worker
        {"Accept": "text/html"},  # no Fetch Metadata: curl, or an insecure context where workers never run
        {**NAVIGATE, "Sec-Fetch-Dest": "image"},
        {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
    ],
)
async def test_everything_else_is_proxied_as_before(one_session, client, headers):
    server, upstream = one_session
    async with client.get(server.url("/session/abc/page"), headers=headers) as resp:
        assert resp.status == 200
        assert "X-Edge-Tab-Bootstrap" not in resp.headers
        assert (await resp.json())["raw_path"] == "/page"
        assert resp.headers["X-Edge-Session"] == "abc"
    assert len(upstream.app[SEEN]) == 1


async def test_host_mode_and_a_disabled_worker_never_bootstrap(edge, serve, client):
    upstream = await serve(upstream_app())
    server = await edge(tab_isolation=False)
    await post_route(server.origin, "abc", upstream.origin)
    async with client.get(server.url("/session/abc/page"), headers=NAVIGATE) as resp:
        assert resp.status == 200 and "X-Edge-Tab-Bootstrap" not in resp.headers
    async with client.get(server.url("/page"), headers={**NAVIGATE, "Host": f"abc.localhost:{server.port}"}) as resp:
        assert resp.status == 200 and "X-Edge-Tab-Bootstrap" not in resp.headers
    assert len(upstream.app[SEEN]) == 2


async def test_the_worker_may_control_the_whole_origin(one_session, client):
    server, _ = one_session
    async with client.get(server.url(WORKER_PATH)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert resp.headers["Service-Worker-Allowed"] == "/"
        assert "navigationPreload" in await resp.text()
