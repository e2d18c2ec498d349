"""Per-tab sessions in prefix mode, the edge's side (edge/prefixing.py, edge/routing.referrer_session).

A page or module asked for under ``/session/<id>/`` comes back with its
root-absolute URLs under that prefix, byte-exact otherwise and with Vite's
``ETag``; everything else passes unchanged. A root-absolute request that no
rewrite reached is routed by the page in its ``Referer``, before the
per-browser cookie. The browser side (two tabs, HMR, links) is tested in
Chromium in test_tabs_browser.py.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from edge.fastpath import FAST_PATH
from edge.prefixing import rewrite_html, rewrite_module, vite_client_with_prefix
from tests.support.routes import post_route
from tests.support.upstreams import SEEN, app_with, canned, raw_upstream, upstream_app

pytestmark = pytest.mark.both_paths

PREFIX = b"/session/abc"

PAGE = (
    b'<!DOCTYPE html><html><head><link rel="icon" type="image/svg+xml" href="/logo.svg">'
    b'<script type="module" src="/@vite/client"></script>\n'
    b"<script type='module' src='/src/pages/index.astro?astro&type=script&index=0&lang.ts'></script>"
    b'<link rel="stylesheet" href="//cdn.example.com/x.css"><link rel="preconnect" href="https://fonts.example.com/">'
    b"</head><body><a href=/about>About</a> <a href=\"/session/other/\">other</a> <a href=\"#top\">top</a>"
    b'<img src="/a.png" srcset="/a.png 1x, /a@2x.png 2x, https://cdn.example.com/b.png 3x" alt="">'
    b'<astro-island uid="1" component-url="/src/components/Counter.tsx" renderer-url="/@id/@astrojs/react/client.js"></astro-island>'
    b'<form action="/contact" method="post"></form><p>Write href="/not-a-tag" in text.</p></body></html>'
)

MODULE = (
    b'import { createHotContext as __vite__createHotContext } from "/@vite/client";'
    b'import.meta.hot = __vite__createHotContext("/src/styles/global.css");'
    b'import { updateStyle as __vite__updateStyle, removeStyle as __vite__removeStyle } from "/@vite/client"\n'
    b"import {\n  a,\n  b,\n} from '/src/lib/ab.ts';\n"
    b'import "/src/styles/extra.css";\n'
    b'export * from "/src/lib/all.ts";\n'
    b'import { chunk } from "./chunk-BUSYA2B4.js?v=1";\n'
    b'const lazy = () => import("/src/lazy.ts");\n'
    b'const kept = "/src/not-an-import.ts"; const other = import("/session/xyz/y.ts");\n'
)


def test_a_page_s_root_absolute_urls_get_the_prefix():
    out = rewrite_html(PAGE, PREFIX)
    for url in (
        b'href="/session/abc/logo.svg"',
        b'src="/session/abc/@vite/client"',
        b"src='/session/abc/src/pages/index.astro?astro&type=script&index=0&lang.ts'",
        b"href=/session/abc/about>",
        b'src="/session/abc/a.png"',
        b'srcset="/session/abc/a.png 1x, /session/abc/a@2x.png 2x, https://cdn.example.com/b.png 3x"',
        b'component-url="/session/abc/src/components/Counter.tsx"',
        b'renderer-url="/session/abc/@id/@astrojs/react/client.js"',
        b'action="/session/abc/contact"',
    ):
        assert url in out
    # Other hosts, other sessions, fragments and text are left alone.
    for kept in (b'href="//cdn.example.com/x.css"', b'href="https://fonts.example.com/"', b'href="/session/other/"', b'href="#top"', b'Write href="/not-a-tag" in text.'):
        assert kept in out
    assert out.replace(PREFIX, b"") == PAGE  # nothing else changed


def test_a_module_s_imports_get_the_prefix_and_its_hmr_id_does_not():
    out = rewrite_module(MODULE, PREFIX)
    assert out.count(b'from "/session/abc/@vite/client"') == 2
    assert b'__vite__createHotContext("/src/styles/global.css")' in out  # Vite's HMR id, not a URL
    for url in (b"from '/session/abc/src/lib/ab.ts'", b'import "/session/abc/src/styles/extra.css"', b'from "/session/abc/src/lib/all.ts"', b'import("/session/abc/src/lazy.ts")'):
        assert url in out
    for kept in (b'from "./chunk-BUSYA2B4.js?v=1"', b'"/src/not-an-import.ts"', b'import("/session/xyz/y.ts")'):
        assert kept in out
    assert out.replace(PREFIX, b"") == MODULE


VITE_CLIENT = (
    "import '/@vite/env';\n"
    'const base$1 = "/" || "/";\n'
    "const socketHost = `${null || importMetaUrl.hostname}:${hmrPort || importMetaUrl.port}${\"/\"}`;\n"
    'const base = "/" || "/";\n'
    "const later = `${\"/\"}`;\n" + "//# sourceMappingURL=data:application/json;base64," + "A" * 100_000 + "\n"
)


def test_vite_s_client_gets_the_prefix_for_imports_updates_and_sockets():
    out = vite_client_with_prefix(rewrite_module(VITE_CLIENT.encode(), PREFIX), PREFIX.decode()).decode()
    assert out.startswith(';(() => { const P = "/session/abc", W = globalThis.WebSocket;')  # this tab's other sockets
    assert "import '/session/abc/@vite/env';" in out
    assert 'const base = "/session/abc/" || "/";' in out and 'const base$1 = "/session/abc/" || "/";' in out
    assert '${"/session/abc/"}`;' in out and 'const later = `${"/"}`;' in out  # only the socket line
    assert out.endswith("A" * 100_000 + "\n")


def site():
    """A dev server's page, module and Vite client, each with an ETag that a reload revalidates."""
    bodies = {
        "/page": (PAGE, "text/html"),
        "/src/main.ts": (MODULE, "text/javascript"),
        "/node_modules/.vite/deps/chunk.js": (MODULE, "text/javascript"),
        "/@vite/client": (VITE_CLIENT.encode(), "text/javascript"),
    }

    async def answer(request: web.Request) -> web.StreamResponse:
        request.app[SEEN].append(request.path)
        body, media = bodies[request.path]
        etag = f'W/"{len(body)}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type=media, headers={"ETag": etag, "Cache-Control": "no-cache"})

    app = app_with({path: answer for path in bodies})
    app[SEEN] = []
    return app


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False) as session:
        yield session


def chunked_upstream(media: str, *pieces: bytes, wait: asyncio.Event | None = None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An upstream handler that answers ``pieces`` as chunks, waiting for ``wait`` (when given) after the first."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": media})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for n, piece in enumerate(pieces):
            if n == 1 and wait is not None:
                await wait.wait()
            await response.write(piece)
        await response.write_eof()
        return response

    return answer


DOCUMENT = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html"}
SCRIPT = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "script", "Accept": "*/*"}


@pytest.mark.parametrize(
    ("path", "headers", "original"),
    [
        ("/page", DOCUMENT, PAGE),
        ("/page", {"Accept": "text/html"}, PAGE),
        ("/src/main.ts", SCRIPT, MODULE),
        ("/node_modules/.vite/deps/chunk.js", SCRIPT, MODULE),  # Vite 7's prebundled deps import /@vite/client too
    ],
    ids=["page", "page-without-fetch-metadata", "module", "prebundled"],
)
async def test_pages_and_modules_under_a_prefix_come_back_prefixed(edge, serve, client, path, headers, original):
    upstream = await serve(site())
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    async with client.get(server.url(f"/session/abc{path}"), headers=headers) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers["X-Edge-Session"] == "abc"
        assert resp.headers["ETag"] == f'W/"{len(original)}"'  # the same upstream body gives the same rewrite for this URL
        if original is PAGE:
            assert "Content-Length" not in resp.headers  # a page streams as it is rewritten
        else:
            assert int(resp.headers["Content-Length"]) == len(body)
    assert body != original and body.replace(PREFIX, b"") == original
    async with client.get(server.url(f"/session/abc{path}"), headers={**headers, "If-None-Match": f'W/"{len(original)}"'}) as resp:
        assert resp.status == 304  # a reload revalidates it
    async with client.head(server.url(f"/session/abc{path}"), headers=headers) as resp:
        assert resp.status == 200 and "Content-Length" not in resp.headers  # not the unrewritten length


async def test_everything_else_passes_unchanged(edge, serve, client, fast_path):
    upstream = await serve(site())
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    for path, headers, original in (
        ("/session/abc/src/main.ts", {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}, MODULE),  # fetch(): data, not an import
        ("/session/abc/page", {"Sec-Fetch-Dest": "image"}, PAGE),
        ("/session/abc/src/main.ts", {}, MODULE),  # curl
        ("/src/main.ts", {**SCRIPT, "Cookie": "edge_session=abc"}, MODULE),  # cookie mode has no prefix to give
        ("/page", {**DOCUMENT, "Host": f"abc.localhost:{server.port}"}, PAGE),  # host mode needs none
    ):
        async with client.get(server.url(path), headers=headers) as resp:
            assert resp.status == 200, path
            assert await resp.read() == original, (path, headers)
    plain = await edge(tab_isolation=False)
    await post_route(plain.origin, "abc", upstream.origin)
    for path, headers, original in (("/session/abc/page", DOCUMENT, PAGE), ("/session/abc/src/main.ts", SCRIPT, MODULE)):
        async with client.get(plain.url(path), headers=headers) as resp:
            assert await resp.read() == original


async def test_vite_s_client_is_prefixed_however_it_is_asked_for(edge, serve, client):
    upstream = await serve(site())
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    for headers in ({}, SCRIPT, {"Sec-Fetch-Dest": "empty"}):
        async with client.get(server.url("/session/abc/@vite/client"), headers=headers) as resp:
            body = await resp.text()
            assert resp.status == 200 and resp.headers["ETag"] == f'W/"{len(VITE_CLIENT)}"'
            assert '${"/session/abc/"}`;' in body and body.startswith(";(() => { const P = \"/session/abc\"")


async def test_a_page_is_rewritten_as_it_streams_with_tags_cut_between_chunks(edge, serve, client):
    tag = b'<img class="x" src="/a.png" srcset="/a.png 1x, /b.png 2x">'
    text = b"<p>a < b, and 1<2 without a close</p>"
    page = b"<html><head>" + (tag + text) * 3000 + b'<a href="/end">end</a></html>'  # about 300 kB
    sizes = (5, 17, 1, 4096, 33)  # cuts inside tags, attribute values and text
    pieces, at = [], 0
    while at < len(page):
        size = sizes[len(pieces) % len(sizes)]
        pieces.append(page[at : at + size])
        at += size
    release = asyncio.Event()

    chunked = chunked_upstream("text/html; charset=utf-8", page[:4096], *pieces, wait=release)  # the rest once the client has the head

    upstream = await serve(app_with({"/page": chunked}))
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    try:
        async with client.get(server.url("/session/abc/page"), headers=DOCUMENT, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200 and "Content-Length" not in resp.headers
            # The head arrives before the upstream sends the rest (a page held whole never would).
            first = await asyncio.wait_for(resp.content.readexactly(64), 5)
            release.set()
            body = first + await resp.read()
    finally:
        release.set()
    assert body == rewrite_html(page[:4096] + page, PREFIX)
    assert b'src="/a.png"' not in body and b'href="/session/abc/end"' in body  # every tag, the last one too


async def test_a_big_module_of_unknown_length_streams_unchanged(edge, serve, client, monkeypatch):
    monkeypatch.setattr("edge.prefixing.MAX_BODY", 64 * 1024)
    big = b'import "/x.js";\n' + b"//" * 100_000
    chunked = chunked_upstream("text/javascript", *(big[at : at + 16 * 1024] for at in range(0, len(big), 16 * 1024)))

    upstream = await serve(app_with({"/big.js": chunked}))
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    async with client.get(server.url("/session/abc/big.js"), headers=SCRIPT) as resp:
        assert resp.status == 200
        assert await resp.read() == big


async def test_a_module_announced_bigger_than_the_limit_passes_unchanged_as_it_arrives(edge, serve, client, monkeypatch):
    monkeypatch.setattr("edge.prefixing.MAX_BODY", 64 * 1024)
    big = b'import "/x.js";\n' + b"//" * 40_000  # 80 kB, with a Content-Length
    release = asyncio.Event()

    async def announced(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/javascript"})
        response.content_length = len(big)
        await response.prepare(request)
        await response.write(big[:16 * 1024])
        await release.wait()  # the rest once the client has the start: a held module never would
        await response.write(big[16 * 1024 :])
        await response.write_eof()
        return response

    upstream = await serve(app_with({"/big.js": announced}))
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    try:
        async with client.get(server.url("/session/abc/big.js"), headers=SCRIPT, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(len(big))
            first = await asyncio.wait_for(resp.content.readexactly(64), 5)
            release.set()
            assert first + await resp.read() == big  # not held, not prefixed
    finally:
        release.set()


async def test_a_root_request_follows_the_page_in_its_referer(edge, serve, client):
    upstream = await serve(upstream_app())
    server = await edge()
    for session in ("abc", "xyz"):
        await post_route(server.origin, session, upstream.origin)
    page = f"http://127.0.0.1:{server.port}/session/abc/blog/post"
    cookie = {"Cookie": "edge_session=xyz"}  # another tab opened thread xyz last
    # fetch(), images and fonts: proxied to the page's session, whatever the cookie says.
    for headers in ({"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}, {"Sec-Fetch-Dest": "image"}, {}):
        async with client.get(server.url("/data.json?x=1"), headers={**headers, **cookie, "Referer": page}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Edge-Session"] == "abc"
            assert (await resp.json())["raw_path"] == "/data.json?x=1"
            assert "Set-Cookie" not in resp.headers
    # Navigations, stylesheets and scripts move under the prefix, so what they load names the session too.
    for headers in (DOCUMENT, {"Sec-Fetch-Dest": "style"}, SCRIPT, {"Accept": "text/html"}):
        async with client.get(server.url("/about?x=1"), headers={**headers, **cookie, "Referer": page}, allow_redirects=False) as resp:
            assert resp.status == 307
            assert resp.headers["Location"] == "/session/abc/about?x=1"
    # A referrer on another host, outside a session, or the edge's own pages: the cookie decides.
    for referer in (
        f"http://other.example:{server.port}/session/abc/",
        f"http://127.0.0.1:{server.port}/about",
        f"http://127.0.0.1:{server.port}/session/abc",
        f"http://127.0.0.1:{server.port}/session/_edge/status/abc",
        "not a url",
    ):
        async with client.get(server.url("/data.json"), headers={**cookie, "Referer": referer}) as resp:
            assert resp.headers["X-Edge-Session"] == "xyz", referer
    # The edge's own paths are never a session's.
    async with client.get(server.url("/api/routes"), headers={"Referer": page}) as resp:
        assert resp.status == 200 and "X-Edge-Session" not in resp.headers
        assert "abc" in str(await resp.json())  # the edge's routes API lists the route
    assert all("/api/" not in seen["raw_path"] for seen in upstream.app[SEEN])


async def test_pages_and_modules_are_rewritten_on_the_fast_path_too(edge, serve, client, fast_path):
    app = site()
    upstream = await serve(app)
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    url, etag = server.url("/session/abc/src/main.ts"), f'W/"{len(MODULE)}"'
    handed_over = server.app[FAST_PATH].handed_over if fast_path else 0
    async with client.get(url, headers={**SCRIPT, "If-None-Match": etag}) as resp:
        assert resp.status == 304 and resp.headers["X-Edge-Session"] == "abc"  # a reload
    async with client.get(url, headers={**SCRIPT, "If-None-Match": 'W/"old"'}) as resp:  # changed since
        body = await resp.read()
        assert resp.status == 200 and resp.headers["ETag"] == etag
        assert int(resp.headers["Content-Length"]) == len(body)
    assert body.replace(PREFIX, b"") == MODULE and b'from "/session/abc/@vite/client"' in body
    async with client.get(server.url("/session/abc/page"), headers=DOCUMENT) as resp:
        assert (await resp.read()) == rewrite_html(PAGE, PREFIX) and "Content-Length" not in resp.headers  # streamed
    async with client.get(server.url("/session/abc/node_modules/.vite/deps/chunk.js"), headers=SCRIPT) as resp:
        assert (await resp.read()) == rewrite_module(MODULE, PREFIX)  # a path the Vite guard looks at, and lets through
    assert app[SEEN] == ["/src/main.ts", "/src/main.ts", "/page", "/node_modules/.vite/deps/chunk.js"]  # each asked for once
    if fast_path:
        fast = server.app[FAST_PATH]
        assert (fast.proxied, fast.handed_over - handed_over) == (4, 0)  # all four answered by the fast path


async def test_a_chunked_module_is_held_and_sent_with_its_length(edge, serve, client):
    chunked = chunked_upstream("text/javascript", MODULE[:30], MODULE[30:200], MODULE[200:])  # imports cut between pieces
    upstream = await serve(app_with({"/chunked.js": chunked}))
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    async with client.get(server.url("/session/abc/chunked.js"), headers=SCRIPT) as resp:
        body = await resp.read()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(body)
        assert "Transfer-Encoding" not in resp.headers
    assert body == rewrite_module(MODULE, PREFIX) and body != MODULE


@pytest.mark.parametrize(("media", "headers", "original", "rewritten"), [
    ("text/html", DOCUMENT, PAGE, rewrite_html(PAGE, PREFIX)),
    ("text/javascript", SCRIPT, MODULE, rewrite_module(MODULE, PREFIX)),
], ids=["page", "module"])
async def test_an_answer_ended_by_closing_is_rewritten_too(edge, client, media, headers, original, rewritten):
    answer = f"HTTP/1.1 200 OK\r\nContent-Type: {media}\r\nConnection: close\r\n\r\n".encode() + original
    async with await raw_upstream(canned(answer)) as upstream:  # no length, no chunks: the body ends when it closes
        server = await edge()
        await post_route(server.origin, "abc", upstream.origin)
        async with client.get(server.url("/session/abc/x"), headers=headers) as resp:
            assert resp.status == 200 and await resp.read() == rewritten
