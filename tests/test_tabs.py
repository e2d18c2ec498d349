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


VITE_CLIENT = (
    "import '/@vite/env';\n"
    "const socketHost = `${null || importMetaUrl.hostname}:${hmrPort || importMetaUrl.port}${\"/\"}`;\n"
    "const later = `${\"/\"}`;\n" + "//# sourceMappingURL=data:application/json;base64," + "A" * 100_000 + "\n"
)


def vite_upstream():
    from aiohttp import web

    async def client_module(request):
        if request.headers.get("If-None-Match") == 'W/"v1"':
            return web.Response(status=304, headers={"ETag": 'W/"v1"'})
        return web.Response(text=VITE_CLIENT, content_type="text/javascript", headers={"ETag": 'W/"v1"', "Cache-Control": "no-cache"})

    app = web.Application()
    app.router.add_get("/@vite/client", client_module)
    return app


@pytest.mark.parametrize("fast_path", [True, False])
async def test_vite_client_under_a_prefix_gets_the_tabs_socket_prefix(edge, serve, client, fast_path):
    upstream = await serve(vite_upstream())
    server = await edge(fast_path=fast_path)
    await post_route(server.origin, "abc", upstream.origin)
    async with client.get(server.url("/session/abc/@vite/client")) as resp:
        body = await resp.text()
        assert resp.status == 200
        assert resp.headers["ETag"] == 'W/"v1"'  # the same upstream body always gives the same rewrite for this URL
        assert int(resp.headers["Content-Length"]) == len(body.encode())
    # The socket base (also used by Vite 7's ping from a SharedWorker) and the shim for this tab's sockets.
    assert '${"/session/abc/"}`;' in body and 'const later = `${"/"}`;' in body  # only the socket line
    assert body.startswith(';(() => { const P = "/session/abc", W = globalThis.WebSocket;')
    assert body.endswith("A" * 100_000 + "\n")
    async with client.get(server.url("/session/abc/@vite/client"), headers={"If-None-Match": 'W/"v1"'}) as resp:
        assert resp.status == 304  # a reload revalidates it

    # Without a prefix (cookie or host mode) or without the tab worker, Vite's client passes untouched.
    async with client.get(server.url("/@vite/client"), headers={"Cookie": "edge_session=abc"}) as resp:
        assert await resp.text() == VITE_CLIENT
    async with client.get(server.url("/@vite/client"), headers={"Host": f"abc.localhost:{server.port}"}) as resp:
        assert await resp.text() == VITE_CLIENT
    plain = await edge(fast_path=fast_path, tab_isolation=False)
    await post_route(plain.origin, "abc", upstream.origin)
    async with client.get(plain.url("/session/abc/@vite/client")) as resp:
        assert await resp.text() == VITE_CLIENT
