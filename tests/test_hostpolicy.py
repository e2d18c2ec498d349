"""The Host allowlist (EDGE_PUBLIC_HOSTS), request-target checks and host-mode sessions."""

from __future__ import annotations

import functools

import aiohttp
import pytest

from edge.hostpolicy import HostPolicy, split_host
from tests.support.rawhttp import parse_response, raw_exchange, request
from tests.support.routes import post_route
from tests.support.upstreams import SEEN, header_values, upstream_app


@pytest.fixture
async def proxied(edge, serve):
    """An edge with sessions ``s1`` and ``s2`` on two upstreams."""

    async def start(**overrides):
        one = await serve(upstream_app())
        two = await serve(upstream_app())
        server = await edge(**overrides)
        await post_route(server.origin, "s1", one.origin)
        await post_route(server.origin, "s2", two.origin)
        return server, one, two

    return start


# The Host line (or its absence) is what these tests are about, so it is written out as a header line.
get = functools.partial(request, "GET", host=None, connection="close")


async def status_of(port: int, data: bytes) -> int:
    return parse_response(await raw_exchange(port, data))[0]


# --- the allowlist ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["evil.example", "webordinary.com", "amelia.webordinary.com", "edit.amelia.webordinary.com.evil.example", "10.0.0.5:8080"],
)
async def test_unknown_host_is_421_and_never_proxied(proxied, host):
    server, one, _ = await proxied()
    for target in ("/session/s1/", "/api/routes", "/@vite/client"):
        data = get(target, f"Host: {host}", "Cookie: edge_session=s1", "Accept: text/html")
        assert await status_of(server.port, data) == 421
    assert one.app[SEEN] == []


@pytest.mark.parametrize(
    "host",
    ["edit.amelia.webordinary.com", "EDIT.Amelia.webordinary.com:443", "x.edit.amelia.webordinary.com", "localhost:8080", "127.0.0.1", "[::1]:8080"],
)
async def test_public_hosts_are_served(proxied, host):
    server, one, _ = await proxied()
    assert await status_of(server.port, get("/session/s1/", f"Host: {host}")) == 200
    assert header_values(one.app[SEEN][0], "X-Forwarded-Host") == [host]


async def test_wildcards_match_below_the_name_only(proxied):
    server, one, _ = await proxied(
        public_hosts=("*.example.test", "127.0.0.1"), session_host_patterns=("{session}.preview.test",)
    )
    assert await status_of(server.port, get("/session/s1/", "Host: a.example.test")) == 200
    assert await status_of(server.port, get("/session/s1/", "Host: a.b.example.test")) == 200
    assert await status_of(server.port, get("/session/s1/", "Host: example.test")) == 421
    assert await status_of(server.port, get("/session/s1/", "Host: evilexample.test")) == 421
    assert await status_of(server.port, get("/session/s1/", "Host: localhost")) == 421
    assert len(one.app[SEEN]) == 2


@pytest.mark.parametrize(
    "data",
    [
        get("http://other.example/session/s1/", "Host: localhost"),
        get("http://localhost/session/s1/", "Host: localhost"),
        get("//localhost/session/s1/", "Host: localhost"),
        b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n",
    ],
    ids=["absolute-other", "absolute-own", "network-path", "asterisk", "authority"],
)
async def test_odd_request_targets_are_refused(proxied, data):
    server, one, _ = await proxied()
    assert await status_of(server.port, data) in (400, 404)
    assert one.app[SEEN] == []


@pytest.mark.parametrize(
    "data",
    [
        get("/session/s1/", version="1.0"),
        get("/session/s1/"),
        get("/session/s1/", "Host: localhost", "Host: localhost"),
        get("/session/s1/", "Host: localhost", "Host: evil.example"),
        get("/session/s1/", "Host: "),
        get("/session/s1/", "Host: user@localhost"),
        get("/session/s1/", "Host: localhost:http"),
        get("/session/s1/", "Host: local host"),
        get("/session/s1/", "Host: [::1"),
    ],
    ids=["http10-missing", "missing", "duplicate", "duplicate-other", "empty", "userinfo", "bad-port", "space", "bad-ipv6"],
)
async def test_missing_duplicate_or_invalid_host_is_refused(proxied, data):
    server, one, _ = await proxied()
    assert await status_of(server.port, data) == 400
    assert one.app[SEEN] == []


async def test_health_answers_load_balancer_checks_by_ip(proxied):
    """An ALB health check names the task's private IP as Host: it must not be refused."""
    server, one, _ = await proxied()
    assert await status_of(server.port, get("/health", "Host: 10.0.12.34:8080")) == 200
    assert await status_of(server.port, get("/api/health", "Host: 10.0.12.34:8080")) == 200
    assert await status_of(server.port, get("/api/routes", "Host: 10.0.12.34:8080")) == 421


def test_split_host():
    assert split_host("Example.COM:8080") == "example.com"
    assert split_host("localhost.") == "localhost"
    assert split_host("[::1]:80") == "[::1]"
    assert split_host("a/b") is None
    assert split_host("a:b") is None
    assert split_host("[zz]") is None


def test_session_hosts():
    policy = HostPolicy(("localhost",), ("{session}--edit.amelia.webordinary.com", "{session}.localhost"))
    assert policy.session_for_host("abc--edit.amelia.webordinary.com") == "abc"
    assert policy.session_for_host("a-b.localhost") == "a-b"
    assert policy.session_for_host("x.y.localhost") is None
    assert policy.session_for_host("abc--edit.amelia.webordinary.com.evil") is None
    assert policy.allows("abc--edit.amelia.webordinary.com")
    assert not policy.allows("edit.amelia.webordinary.com")


# --- host mode --------------------------------------------------------------------------------


async def test_host_mode_sends_the_path_unchanged(proxied):
    server, one, _ = await proxied()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        url = aiohttp.client.URL(server.url("/session/x/a%2Fb?q=%2F+1&q=2"), encoded=True)
        async with client.get(url, headers={"Host": f"s1.localhost:{server.port}"}) as resp:
            assert resp.status == 200
            assert resp.headers["X-Edge-Session"] == "s1"
            assert "Set-Cookie" not in resp.headers
            record = await resp.json()
    assert record["raw_path"] == "/session/x/a%2Fb?q=%2F+1&q=2"
    assert header_values(record, "Host") == [f"127.0.0.1:{one.port}"]
    assert header_values(record, "X-Forwarded-Host") == [f"s1.localhost:{server.port}"]
    assert header_values(record, "X-Forwarded-Prefix") == []


async def test_host_mode_redirects_stay_on_the_session_host(proxied):
    server, one, _ = await proxied()
    async with aiohttp.ClientSession() as client:
        async with client.get(
            server.url("/redirect"),
            params={"to": one.url("/next?x=1")},
            headers={"Host": "s1--edit.amelia.webordinary.com", "X-Forwarded-Proto": "https"},
            allow_redirects=False,
        ) as resp:
            assert resp.headers["Location"] == "https://s1--edit.amelia.webordinary.com/next?x=1"
        async with client.get(
            server.url("/redirect"), params={"to": "/login"}, headers={"Host": "s1.localhost"}, allow_redirects=False
        ) as resp:
            assert resp.headers["Location"] == "/login"


async def test_two_sessions_in_one_client_do_not_collide(proxied):
    """One browser (one cookie jar) with two previews open: each host reaches its own upstream."""
    server, one, two = await proxied()
    async with aiohttp.ClientSession() as client:  # a real cookie jar
        for _ in range(3):
            for session, upstream in (("s1", one), ("s2", two)):
                async with client.get(
                    server.url("/@vite/client"), headers={"Host": f"{session}.localhost:{server.port}"}
                ) as resp:
                    assert resp.headers["X-Edge-Session"] == session
                    assert header_values(await resp.json(), "Host") == [f"127.0.0.1:{upstream.port}"]
    assert len(one.app[SEEN]) == 3 and len(two.app[SEEN]) == 3


async def test_host_mode_unknown_session_is_404(proxied):
    server, one, _ = await proxied()
    assert await status_of(server.port, get("/", "Host: nobody.localhost")) == 404
    assert one.app[SEEN] == []
