"""How a request finds its session: the /session/<id>/ prefix, and the edge's cookie for root-absolute paths."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from edge.routing import strip_session_cookie
from tests.support.rawhttp import parse_response, raw_exchange, request
from tests.support.routes import post_route
from tests.support.upstreams import SEEN, app_with, header_values, upstream_app

# Every test runs with the fast path on and off: the two request paths answer alike.
pytestmark = pytest.mark.both_paths


@pytest.fixture
async def two_sessions(edge, serve):
    """An edge with sessions ``abc`` and ``abcd`` on two upstreams."""
    abc = await serve(upstream_app())
    abcd = await serve(upstream_app())
    server = await edge()
    await post_route(server.origin, "abc", abc.origin)
    await post_route(server.origin, "abcd", abcd.origin)
    return server, abc, abcd


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def location_of(headers: list[tuple[str, str]]) -> str:
    return next(value for name, value in headers if name.lower() == "location")


# --- prefix mode ------------------------------------------------------------------------------


async def test_prefix_matches_whole_segments_only(two_sessions, client):
    server, abc, abcd = two_sessions
    async with client.get(server.url("/session/abc/page")) as resp:
        assert (await resp.json())["raw_path"] == "/page"
    async with client.get(server.url("/session/abcd/page")) as resp:
        assert (await resp.json())["raw_path"] == "/page"
    async with client.get(server.url("/session/abc.d/page")) as resp:
        assert resp.status == 404
    async with client.get(server.url("/session/ab/page")) as resp:
        assert resp.status == 404
    assert len(abc.app[SEEN]) == 1 and len(abcd.app[SEEN]) == 1


@pytest.mark.parametrize(
    "target, location",
    [
        ("/session/abc", "/session/abc/"),
        ("/session/abc?x=%2F&y=a+b&z=&z=%E2%9C%93", "/session/abc/?x=%2F&y=a+b&z=&z=%E2%9C%93"),
        ("/session/nobody?q=1", "/session/nobody/?q=1"),
    ],
)
async def test_session_root_without_slash_redirects_keeping_the_query(two_sessions, target, location):
    server, abc, _ = two_sessions
    data = await raw_exchange(server.port, request("GET", target, host=server.host, connection="close"))
    status, _, headers, _ = parse_response(data)
    assert status == 307
    assert location_of(headers) == location
    assert abc.app[SEEN] == []


async def test_prefix_is_stripped_and_the_prefix_announced(two_sessions, client):
    server, abc, _ = two_sessions
    async with client.get(server.url("/session/abc/")) as resp:
        record = await resp.json()
    assert record["raw_path"] == "/"
    assert header_values(record, "X-Forwarded-Prefix") == ["/session/abc"]


async def test_prefix_responses_set_the_session_cookie_once(two_sessions, client):
    server, _, _ = two_sessions
    async with client.get(server.url("/session/abc/")) as resp:
        cookie = resp.cookies["edge_session"]
        assert cookie.value == "abc"
        assert cookie["path"] == "/"
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Lax"
    async with client.get(server.url("/session/abc/"), headers={"Cookie": "edge_session=abc"}) as resp:
        assert "Set-Cookie" not in resp.headers
    async with client.get(server.url("/session/abcd/"), headers={"Cookie": "edge_session=abc"}) as resp:
        assert resp.cookies["edge_session"].value == "abcd"


# --- cookie mode ------------------------------------------------------------------------------

ROOT_ABSOLUTE = [
    "/@vite/client",
    "/@fs/work/site/node_modules/vite/dist/client/env.mjs",
    "/src/pages/index.astro?astro&type=script&index=0&lang.ts",
    "/node_modules/.vite/deps/astro.js?v=1a2b3c4d",
    "/_astro/index.Bx1-2.css",
    "/favicon.svg",
    "/?token=AbC-_123",
    "/@id/astro:scripts/page.js",
]


@pytest.mark.parametrize("path", ROOT_ABSOLUTE)
async def test_root_absolute_subresources_follow_the_cookie(two_sessions, client, path):
    server, abc, abcd = two_sessions
    headers = {"Cookie": "edge_session=abcd", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "script", "Accept": "*/*"}
    async with client.get(aiohttp.client.URL(server.url(path), encoded=True), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["X-Edge-Session"] == "abcd"
        assert "Set-Cookie" not in resp.headers
        record = await resp.json()
    assert record["raw_path"] == path
    assert header_values(record, "Cookie") == []
    assert header_values(record, "X-Forwarded-Prefix") == []
    assert abc.app[SEEN] == []


@pytest.mark.parametrize(
    "headers",
    [
        ("Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: document", "Accept: text/html"),
        ("Sec-Fetch-Mode: navigate", "Sec-Fetch-Dest: iframe", "Accept: */*"),
        ("Accept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8",),
    ],
    ids=["navigate", "iframe", "html-accept"],
)
async def test_root_absolute_navigations_redirect_under_the_session(two_sessions, headers):
    server, abc, _ = two_sessions
    target = "/about/team?x=%2F&y=a+b"
    data = await raw_exchange(
        server.port, request("GET", target, "Cookie: edge_session=abc", *headers, host=server.host, connection="close")
    )
    status, _, response_headers, _ = parse_response(data)
    assert status == 307
    assert location_of(response_headers) == "/session/abc/about/team?x=%2F&y=a+b"
    assert abc.app[SEEN] == []


async def test_a_fetch_with_html_accept_is_not_a_navigation(two_sessions, client):
    server, abc, _ = two_sessions
    headers = {"Cookie": "edge_session=abc", "Sec-Fetch-Mode": "cors", "Accept": "text/html"}
    async with client.get(server.url("/partial.html"), headers=headers, allow_redirects=False) as resp:
        assert resp.status == 200
        assert (await resp.json())["raw_path"] == "/partial.html"


@pytest.mark.parametrize(
    "sent, forwarded",
    [
        ("edge_session=abc; a=1; b=2", "a=1; b=2"),
        ("a=1; edge_session=abc; b=2", "a=1; b=2"),
        ("a=1; b=2; edge_session=abc", "a=1; b=2"),
        ("a=1;edge_session=abc;b=2", "a=1;b=2"),
        ('theme="dark mode";  edge_session=abc ;sid=Zm9v==; e=', 'theme="dark mode";sid=Zm9v==; e='),
        ("x_edge_session=1; edge_session=abc; edge_session_x=2", "x_edge_session=1; edge_session_x=2"),
        ("a=1; edge_session=abc; edge_session=abcd", "a=1"),
    ],
)
async def test_the_edge_cookie_is_removed_and_others_pass_byte_identical(two_sessions, client, sent, forwarded):
    server, abc, _ = two_sessions
    async with client.get(server.url("/session/abc/c"), headers={"Cookie": sent}) as resp:
        record = await resp.json()
    assert header_values(record, "Cookie") == [forwarded]


async def test_a_cookie_header_with_only_the_edge_cookie_is_dropped(two_sessions, client):
    server, abc, _ = two_sessions
    async with client.get(server.url("/session/abc/c"), headers={"Cookie": "edge_session=abc"}) as resp:
        record = await resp.json()
    assert header_values(record, "Cookie") == []


async def test_foreign_cookies_pass_untouched(two_sessions, client):
    server, abc, _ = two_sessions
    sent = "a=1;  b=2 ;c"
    async with client.get(server.url("/session/abc/c"), headers={"Cookie": sent}) as resp:
        assert header_values(await resp.json(), "Cookie") == [sent]


def test_strip_session_cookie_keeps_every_other_pair():
    assert strip_session_cookie("a=1; edge_session=x") == "a=1"
    assert strip_session_cookie("edge_session=x") is None
    assert strip_session_cookie(" edge_session=x ; ") is None
    assert strip_session_cookie("a=b") == "a=b"


@pytest.mark.parametrize("path", ["/api/nope", "/api", "/_edge/x", "/session/bad..id/", "/metrics"])
async def test_edge_paths_never_follow_the_cookie(two_sessions, client, path):
    server, abc, _ = two_sessions
    async with client.post(server.url(path), headers={"Cookie": "edge_session=abc"}) as resp:
        assert resp.status == 404
        assert (await resp.json())["success"] is False
    assert abc.app[SEEN] == []


@pytest.mark.parametrize("cookie", [None, "edge_session=", "edge_session=../x", "edge_session=a%2Fb", "other=abc"])
async def test_root_absolute_without_a_usable_cookie_is_404(two_sessions, client, cookie):
    server, abc, _ = two_sessions
    headers = {"Cookie": cookie} if cookie else {}
    async with client.get(server.url("/@vite/client"), headers=headers) as resp:
        assert resp.status == 404
    assert abc.app[SEEN] == []


async def test_the_hmr_socket_follows_the_cookie(edge, serve, client):
    async def hmr(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("vite-hmr",))
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "connected", "query": request.raw_path}))
        await ws.close()
        return ws

    upstream = await serve(app_with({"GET /": hmr}))
    server = await edge()
    await post_route(server.origin, "abc", upstream.origin)
    async with client.ws_connect(
        server.url("/?token=AbC-_123"),
        protocols=("vite-hmr",),
        headers={"Cookie": "edge_session=abc", "Origin": server.origin, "Accept": "text/html"},
    ) as ws:
        assert ws.protocol == "vite-hmr"
        message = await ws.receive_json(timeout=10)
    assert message == {"type": "connected", "query": "/?token=AbC-_123"}
