"""API authentication (EDGE_API_TOKEN), no CORS, same-site WebSockets, and the refusal to run an open API."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edge.auth import exposure_problem, is_loopback, is_protected
from edge.settings import Settings
from tests.conftest import free_port
from tests.support.routes import add_route
from tests.support.upstreams import SEEN, upstream_app
from tests.support.websocket import PROTOCOLS, WsUpstream

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT = aiohttp.ClientTimeout(total=30)
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(180)


def protected_routes(app) -> list[tuple[str, str]]:
    """(method, concrete path) of every edge route the token protects, from the app's own router."""
    found = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method == "*" or not is_protected(canonical):
            continue
        found.append((route.method, re.sub(r"\{[^}]+\}", "x1", canonical)))
    return sorted(set(found))


@pytest.fixture
async def guarded(edge):
    return await edge(api_token=TOKEN)


async def test_the_enumeration_covers_the_api(guarded):
    routes = protected_routes(guarded.app)
    paths = {path for _, path in routes}
    assert {"/api/routes", "/api/init", "/metrics", "/api/git/commit/x1/x1/x1", "/api/astro/start/x1/x1/x1"} <= paths
    assert "/api/health" not in paths


async def test_every_api_route_needs_the_token(guarded):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for method, path in protected_routes(guarded.app):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
                async with client.request(method, guarded.url(path), headers=headers) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                    if method != "HEAD":
                        body = await resp.json()
                        assert body["success"] is False and body["error"], (method, path)
                        assert TOKEN not in await resp.text()


async def test_with_the_token_every_api_route_answers(guarded):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for method, path in protected_routes(guarded.app):
            async with client.request(method, guarded.url(path), headers=AUTH) as resp:
                assert resp.status != 401, (method, path)
        async with client.get(guarded.url("/api/routes"), headers={"authorization": f"bearer {TOKEN}"}) as resp:
            assert resp.status == 200  # the scheme is case-insensitive


async def test_unknown_api_paths_need_the_token_too(guarded):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for path in ("/api", "/api/", "/api/nothing/here", "/%61pi/routes"):
            async with client.get(guarded.url(path)) as resp:
                assert resp.status == 401, path
            async with client.get(guarded.url(path), headers=AUTH) as resp:
                assert resp.status != 401, path


async def test_health_stays_open(guarded):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        async with client.get(guarded.url("/api/health")) as resp:
            assert (resp.status, await resp.text()) == (200, "OK")
        async with client.get(guarded.url("/health")) as resp:
            assert resp.status == 200


async def test_cookies_and_query_tokens_are_not_credentials(guarded):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for query in ("token", "access_token", "api_token", "auth"):
            async with client.get(guarded.url(f"/api/routes?{query}={TOKEN}")) as resp:
                assert resp.status == 401, query
        for cookie in (f"token={TOKEN}", f"Authorization=Bearer {TOKEN}", f"edge_token={TOKEN}"):
            async with client.get(guarded.url("/api/routes"), headers={"Cookie": cookie}) as resp:
                assert resp.status == 401, cookie


async def test_two_authorization_headers_are_refused(guarded):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        headers = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer wrong")]
        async with client.get(guarded.url("/api/routes"), headers=headers) as resp:
            assert resp.status == 401


async def test_no_token_configured_means_no_authentication(edge):
    open_edge = await edge()
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        async with client.get(open_edge.url("/api/routes")) as resp:
            assert resp.status == 200
        async with client.get(open_edge.url("/metrics")) as resp:
            assert resp.status == 200


async def test_no_cors_permissions_on_the_api(guarded):
    preflight = {
        "Origin": "http://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for path in ("/api/routes", "/api/routes/s1", "/api/init", "/metrics", "/api/health"):
            async with client.options(guarded.url(path), headers=preflight) as resp:
                assert not [h for h in resp.headers if h.lower().startswith("access-control-")], path
                assert resp.status >= 400, path
        async with client.get(guarded.url("/api/routes"), headers={**AUTH, "Origin": "http://evil.example"}) as resp:
            assert resp.status == 200
            assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_session_hosts_never_reach_the_api(edge, serve):
    """On ``<id>.localhost`` every path is the preview's: /api/* and /metrics go upstream, no token asked."""
    upstream = await serve(upstream_app())
    guarded = await edge(api_token=TOKEN)
    add_route(guarded, "s1", upstream.origin)
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for path in ("/api/routes", "/api/init", "/metrics"):
            async with client.get(guarded.url(path), headers={"Host": f"s1.localhost:{guarded.port}"}) as resp:
                assert resp.status == 200, path
                assert resp.headers.get("X-Edge-Session") == "s1"
    assert [seen["raw_path"] for seen in upstream.app[SEEN]] == ["/api/routes", "/api/init", "/metrics"]


@pytest.fixture
async def ws_session(edge, serve):
    recorder = WsUpstream()
    upstream = await serve(recorder.app())
    guarded = await edge(api_token=TOKEN)
    add_route(guarded, "s1", upstream.origin)
    return guarded, recorder


async def test_cross_site_websocket_is_refused_before_the_upstream(ws_session):
    guarded, recorder = ws_session
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for origin in ("http://evil.example", "https://edit.amelia.webordinary.com.evil.example", "null", "garbage"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await client.ws_connect(guarded.url("/session/s1/"), protocols=PROTOCOLS, origin=origin)
            assert refused.value.status == 403, origin
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(
                guarded.url("/"), protocols=PROTOCOLS, origin="http://evil.example", headers={"Host": "s1.localhost"}
            )
        assert refused.value.status == 403
    assert recorder.handshakes == []


async def test_same_site_websocket_is_relayed(ws_session):
    guarded, recorder = ws_session
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for origin in (f"http://localhost:{guarded.port}", "https://edit.amelia.webordinary.com", "https://s1--edit.amelia.webordinary.com"):
            async with client.ws_connect(guarded.url("/session/s1/"), protocols=PROTOCOLS, origin=origin) as ws:
                await ws.send_str("hello")
                msg = await ws.receive(timeout=10)
                assert msg.data == "hello"
        async with client.ws_connect(guarded.url("/session/s1/"), protocols=PROTOCOLS) as ws:  # no Origin: not a browser
            await ws.send_str("again")
            assert (await ws.receive(timeout=10)).data == "again"
    assert len(recorder.handshakes) == 4


def test_loopback_rule():
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.5"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.4", "edge.internal"))
    base = Settings.from_env({})
    assert exposure_problem(replace(base, host="0.0.0.0")) is not None
    assert exposure_problem(replace(base, host="0.0.0.0", api_token="x")) is None
    assert exposure_problem(replace(base, host="0.0.0.0", allow_no_auth=True)) is None
    assert exposure_problem(base) is None


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return {**env, "WORKSPACE_PATH": str(tmp_path / "ws"), "AUTO_SHUTDOWN_MINUTES": "0", "PYTHONUNBUFFERED": "1", **extra}


def test_serve_refuses_an_open_api_beyond_loopback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edge", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on '0.0.0.0' without an API token" in done.stderr
    assert "EDGE_API_TOKEN" in done.stderr and "EDGE_ALLOW_NO_AUTH=1" in done.stderr
