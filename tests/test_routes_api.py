"""The routes API (in the manner of configurable-http-proxy): /api/routes[/<sessionId>]."""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest

from edge import keys
from tests.support.upstreams import SEEN, upstream_app


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


async def test_create_read_list_replace_delete(edge, serve, client):
    upstream = await serve(upstream_app())
    other = await serve(upstream_app())
    server = await edge()
    api = server.url("/api/routes")

    async with client.get(api) as resp:
        assert resp.status == 200
        assert await resp.json() == {"success": True, "routes": {}}
    async with client.get(f"{api}/s1") as resp:
        assert resp.status == 404
        assert (await resp.json())["success"] is False

    async with client.post(f"{api}/s1", json={"target": upstream.origin}) as resp:
        assert resp.status == 201
        body = await resp.json()
        assert body["success"] is True and body["sessionId"] == "s1" and body["target"] == upstream.origin
    async with client.get(f"{api}/s1") as resp:
        assert (await resp.json())["target"] == upstream.origin
    async with client.get(api) as resp:
        assert list((await resp.json())["routes"]) == ["s1"]
    async with client.get(server.url("/session/s1/x")) as resp:
        assert resp.status == 200
    assert len(upstream.app[SEEN]) == 1

    async with client.post(f"{api}/s1", json={"target": other.origin + "/"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["target"] == other.origin
    async with client.get(server.url("/session/s1/x")) as resp:
        assert resp.status == 200
    assert len(other.app[SEEN]) == 1

    async with client.delete(f"{api}/s1") as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    async with client.delete(f"{api}/s1") as resp:
        assert resp.status == 404
    async with client.get(server.url("/session/s1/x")) as resp:
        assert resp.status == 404
    assert len(other.app[SEEN]) == 1


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1:80",
        "http://169.254.169.254:80",
        "http://example.com:80",
        "http://localhost:4400",
        "https://127.0.0.1:4400",
        "ftp://127.0.0.1:21",
        "http://user:secret@127.0.0.1:4400",
        "http://user@127.0.0.1:4400",
        "http://127.0.0.1:4400/path",
        "http://127.0.0.1:4400/?q=1",
        "http://127.0.0.1:4400#frag",
        "http://127.0.0.1",
        "http://127.0.0.1:0",
        "http://127.0.0.1:99999",
        "http://127.1:4400",
        "http://2130706433:4400",
        "http://[::ffff:10.0.0.1]:4400",
        "127.0.0.1:4400",
        "",
        42,
        None,
        ["http://127.0.0.1:4400"],
    ],
)
async def test_bad_targets_are_400_and_change_nothing(edge, client, target):
    server = await edge()
    async with client.post(server.url("/api/routes/s1"), json={"target": target}) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert body["success"] is False and body["error"]
        assert "secret" not in body["error"]
    assert len(server.app[keys.SESSIONS]) == 0


@pytest.mark.parametrize(
    "body, content_type",
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"http://127.0.0.1:1"', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"", "application/json"),
        (b"null", "application/json"),
        (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "application/json"),  # nested, under the body limit
        (b'{"target": ' + b"9" * 100_000 + b"}", "application/json"),  # a number past Python's digit limit
    ],
    ids=["invalid", "array", "string", "binary", "empty", "null", "nested", "huge-number"],
)
async def test_bad_bodies_are_400(edge, client, body, content_type):
    server = await edge()
    async with client.post(server.url("/api/routes/s1"), data=body, headers={"Content-Type": content_type}) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        assert (await resp.json())["success"] is False
    assert len(server.app[keys.SESSIONS]) == 0


async def test_oversized_body_is_413(edge, client):
    server = await edge()
    async with client.post(server.url("/api/routes/s1"), data=b"{" + b" " * (2 * 1024 * 1024) + b"}") as resp:
        assert resp.status == 413
        assert (await resp.json())["success"] is False


@pytest.mark.parametrize("session_id", ["..", ".hidden", "-dash", "a" * 65, "a%20b", "a..b"])
async def test_invalid_session_ids_are_refused(edge, serve, client, session_id):
    upstream = await serve(upstream_app())
    server = await edge()
    url = aiohttp.client.URL(server.url(f"/api/routes/{session_id}"), encoded=True)
    async with client.post(url, json={"target": upstream.origin}) as resp:
        assert resp.status in (400, 404)
        assert (await resp.json())["success"] is False
    assert len(server.app[keys.SESSIONS]) == 0


async def test_upstream_networks_are_configurable(edge, client):
    server = await edge(upstream_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    async with client.post(server.url("/api/routes/s1"), json={"target": "http://10.1.2.3:4321"}) as resp:
        assert resp.status == 201
    async with client.post(server.url("/api/routes/s2"), json={"target": "http://127.0.0.1:4321"}) as resp:
        assert resp.status == 400


async def test_ipv6_loopback_target(edge, client):
    server = await edge()
    async with client.post(server.url("/api/routes/s1"), json={"target": "http://[::1]:4321"}) as resp:
        assert resp.status == 201
        assert (await resp.json())["target"] == "http://[::1]:4321"
