"""EDGE_PREVIEW_HOST_REDIRECT=1: a browser's page load under /session/<id>/ goes to the session's own host."""

from __future__ import annotations

import aiohttp
import pytest

from edge.settings import Settings
from tests.support.routes import post_route
from tests.support.upstreams import SEEN, upstream_app

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html"}
PLAIN_HTTP_PAGE = {"Upgrade-Insecure-Requests": "1", "Accept": "text/html,application/xhtml+xml"}  # no Fetch Metadata


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture(params=[True, False], ids=["fast-path", "aiohttp-path"])
async def redirecting(edge, serve, request):
    upstream = await serve(upstream_app())
    server = await edge(preview_host_redirect=True, fast_path=request.param)
    await post_route(server.origin, "abc", upstream.origin)
    return server, upstream


def test_the_variable_turns_it_on():
    assert Settings.from_env({}).preview_host_redirect is False
    assert Settings.from_env({"EDGE_PREVIEW_HOST_REDIRECT": "1"}).preview_host_redirect is True


@pytest.mark.parametrize(
    "host, target",
    [
        ("edit.amelia.webordinary.com", "abc--edit.amelia.webordinary.com"),  # the pattern built on the requested host
        ("localhost", "abc.localhost"),
        ("127.0.0.1", "abc--edit.amelia.webordinary.com"),  # no pattern on this host: the first one
    ],
)
@pytest.mark.parametrize("headers", [NAVIGATE, PLAIN_HTTP_PAGE], ids=["fetch-metadata", "plain-http"])
async def test_a_page_load_goes_to_the_session_host_with_its_path_and_query(redirecting, client, host, target, headers):
    server, upstream = redirecting
    async with client.get(
        server.url("/session/abc/blog/post?page=2&q=a%20b"),
        headers={**headers, "Host": f"{host}:{server.port}"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 307
        assert resp.headers["Location"] == f"//{target}:{server.port}/blog/post?page=2&q=a%20b"
        assert resp.headers["Cache-Control"] == "no-store"
    assert upstream.app[SEEN] == []  # nothing reached the dev server

    # There the same page is the session's, in host mode.
    async with client.get(server.url("/blog/post?page=2&q=a%20b"), headers={**headers, "Host": f"{target}:{server.port}"}) as resp:
        assert resp.status == 200
        assert resp.headers["X-Edge-Session"] == "abc"
        assert (await resp.json())["raw_path"] == "/blog/post?page=2&q=a%20b"


@pytest.mark.parametrize(
    "method, path, headers",
    [
        ("GET", "/session/abc/src/main.js", {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "script"}),  # a module
        ("GET", "/session/abc/logo.png", {**NAVIGATE, "Sec-Fetch-Dest": "image"}),
        ("GET", "/session/abc/page", {"Accept": "*/*"}),  # curl
        ("POST", "/session/abc/form", NAVIGATE),  # a form post keeps its body where it was sent
    ],
)
async def test_only_page_loads_are_redirected(redirecting, client, method, path, headers):
    server, upstream = redirecting
    async with client.request(method, server.url(path), headers={**headers, "Service-Worker-Navigation-Preload": "true"}, allow_redirects=False) as resp:
        assert resp.status == 200
        assert resp.headers["X-Edge-Session"] == "abc"
    assert len(upstream.app[SEEN]) == 1


@pytest.mark.parametrize("session_id", ["Abc", "a_b", "a.b"])
async def test_an_id_that_is_no_host_label_stays_in_prefix_mode(edge, serve, client, session_id):
    upstream = await serve(upstream_app())
    server = await edge(preview_host_redirect=True)
    await post_route(server.origin, session_id, upstream.origin)
    async with client.get(server.url(f"/session/{session_id}/page"), headers=NAVIGATE, allow_redirects=False) as resp:
        assert resp.status == 200
        assert resp.headers["X-Edge-Session"] == session_id


async def test_off_by_default_and_without_session_host_patterns(edge, serve, client):
    upstream = await serve(upstream_app())
    for overrides in ({}, {"preview_host_redirect": True, "session_host_patterns": ()}):
        server = await edge(**overrides)
        await post_route(server.origin, "abc", upstream.origin)
        async with client.get(server.url("/session/abc/page"), headers=NAVIGATE, allow_redirects=False) as resp:
            assert resp.status == 200
            assert resp.headers["X-Edge-Session"] == "abc"  # prefix mode as before: proxied
