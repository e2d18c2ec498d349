"""HTTP proxying through a real edge to real upstream servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import ipaddress
import json
import socket
import struct

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from edge import keys
from edge.headers import public_location, upstream_host
from edge.routing import Route, RouteState
from tests.conftest import free_port
from tests.support.rawhttp import parse_response, raw_exchange, read_head, request
from tests.support.routes import post_route
from tests.support.upstreams import (
    CHUNK,
    GZIP_BODY,
    RELEASE,
    SECOND_SENT,
    SEEN,
    canned,
    header_values,
    pattern_bytes,
    pattern_sha256,
    raw_upstream,
    upstream_app,
)

# Every test runs with the fast path on and off: the two request paths answer alike.
pytestmark = [pytest.mark.both_paths, pytest.mark.both_loops]

MiB = 1024 * 1024


@pytest.fixture
async def proxied(edge, serve):
    """An edge with session ``s1`` routed to a fresh :func:`upstream_app`."""

    async def start(**overrides):
        upstream = await serve(upstream_app())
        server = await edge(**overrides)
        await post_route(server.origin, "s1", upstream.origin)
        return server, upstream

    return start


@pytest.fixture
async def client():
    async with aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def vm_rss() -> int:
    """This process's resident memory in bytes (the edge runs in the test process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# --- methods, targets and request headers -------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "PURGE", "QUERY"])
async def test_every_method_reaches_the_upstream(proxied, client, method):
    server, upstream = await proxied()
    async with client.request(method, server.url("/session/s1/m"), data=b"payload") as resp:
        assert resp.status == 200
        assert resp.headers["X-Edge-Session"] == "s1"
        record = await resp.json()
    assert record["method"] == method
    assert record["body"] == "payload"


async def test_head_keeps_content_length_and_sends_no_body(proxied):
    server, upstream = await proxied()
    data = await raw_exchange(
        server.port,
        request("HEAD", "/session/s1/bytes/12345", host=server.host)
        + request("GET", "/session/s1/after-head", host=server.host, connection="close"),
    )
    first, _, rest = data.partition(b"\r\n\r\n")
    status, _, headers, _ = parse_response(first + b"\r\n\r\n")
    assert status == 200
    assert ("Content-Length", "12345") in headers
    # Nothing between the HEAD answer and the next response on the same connection.
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert [r["method"] for r in upstream.app[SEEN]] == ["HEAD", "GET"]


async def test_not_modified_has_no_body_and_keeps_validators(proxied):
    server, upstream = await proxied()
    data = await raw_exchange(
        server.port,
        request("GET", "/session/s1/etag", 'If-None-Match: "v1"', host=server.host)
        + request("GET", "/session/s1/after-304", host=server.host, connection="close"),
    )
    first, _, rest = data.partition(b"\r\n\r\n")
    status, _, headers, _ = parse_response(first + b"\r\n\r\n")
    assert status == 304
    assert ("etag", '"v1"') in [(name.lower(), value) for name, value in headers]
    assert not any(name.lower() == "transfer-encoding" for name, _ in headers)
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    "public, upstream_target",
    [
        ("/session/s1/a%2Fb/c%20d", "/a%2Fb/c%20d"),
        ("/session/s1/%E2%9C%93/caf%C3%A9?q=%E2%9C%93", "/%E2%9C%93/caf%C3%A9?q=%E2%9C%93"),
        ("/session/s1/p?x=%2F&y=a+b&z=%20&r=1&r=2&empty=&flag", "/p?x=%2F&y=a+b&z=%20&r=1&r=2&empty=&flag"),
        ("/session/s1/p?q=%25&semi=a;b&plus=%2B", "/p?q=%25&semi=a;b&plus=%2B"),
        ("/session/s1/a;v=1/b", "/a;v=1/b"),
        ("/session/s1//double//slash", "//double//slash"),
        ("/session/s1/a/../b/./c", "/a/../b/./c"),
        ("/session/s1/", "/"),
        ("/session/s1/?token=AbC-_123", "/?token=AbC-_123"),
    ],
)
async def test_raw_path_and_query_reach_the_upstream_byte_identical(proxied, public, upstream_target):
    server, upstream = await proxied()
    data = await raw_exchange(server.port, request("GET", public, host=server.host, connection="close"))
    status, _, _, body = parse_response(data)
    assert status == 200
    assert json.loads(body)["raw_path"] == upstream_target
    assert upstream.app[SEEN][0]["raw_path"] == upstream_target


async def test_aiohttp_client_adds_none_of_its_own_headers(proxied):
    server, upstream = await proxied()
    await raw_exchange(server.port, request("GET", "/session/s1/plain", host=server.host, connection="close"))
    await raw_exchange(
        server.port,
        request("POST", "/session/s1/upload", "Content-Length: 5", host=server.host, connection="close", body=b"hello"),
    )
    get, post = upstream.app[SEEN]
    forwarded = {"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Prefix"}
    assert {name for name, _ in get["headers"]} == {"Host"} | forwarded
    assert {name for name, _ in post["headers"]} == {"Host", "Content-Length"} | forwarded
    assert post["body"] == "hello"


async def test_client_headers_pass_in_order_and_upstream_host_is_rewritten(proxied, client):
    server, upstream = await proxied()
    headers = [("Accept", "text/css"), ("X-One", "1"), ("Accept-Language", "fr"), ("X-One", "2"), ("User-Agent", "ua/1")]
    async with client.get(server.url("/session/s1/h"), headers=CIMultiDict(headers), skip_auto_headers=("Accept-Encoding",)) as resp:
        record = await resp.json()
    assert header_values(record, "Host") == [f"127.0.0.1:{upstream.port}"]
    kept = [(n, v) for n, v in record["headers"] if n in ("Accept", "X-One", "Accept-Language", "User-Agent")]
    assert kept == headers
    assert header_values(record, "X-Forwarded-Host") == [f"127.0.0.1:{server.port}"]
    assert header_values(record, "X-Forwarded-Proto") == ["http"]
    assert header_values(record, "X-Forwarded-Port") == [str(server.port)]
    assert header_values(record, "X-Forwarded-Prefix") == ["/session/s1"]
    assert header_values(record, "X-Forwarded-For") == ["127.0.0.1"]


async def test_trusted_peer_extends_the_forwarded_chain(proxied, client):
    server, upstream = await proxied()  # default EDGE_TRUSTED_PROXIES includes 127.0.0.0/8
    sent = {
        "X-Forwarded-For": "203.0.113.9, 198.51.100.2",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
    }
    async with client.get(server.url("/session/s1/h"), headers=sent) as resp:
        record = await resp.json()
        assert "Secure" in resp.headers["Set-Cookie"]
    assert header_values(record, "X-Forwarded-For") == ["203.0.113.9, 198.51.100.2, 127.0.0.1"]
    assert header_values(record, "X-Forwarded-Proto") == ["https"]
    assert header_values(record, "X-Forwarded-Port") == ["443"]


async def test_untrusted_peer_cannot_forge_forwarding_headers(proxied, client):
    server, upstream = await proxied(trusted_proxies=(ipaddress.ip_network("10.99.0.0/16"),))
    forged = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Prefix": "/evil",
        "X-Forwarded-Server": "evil",
        "Forwarded": "for=203.0.113.9;proto=https",
    }
    async with client.get(server.url("/session/s1/h"), headers=forged) as resp:
        record = await resp.json()
        assert "Secure" not in resp.headers["Set-Cookie"]
    assert header_values(record, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(record, "X-Forwarded-Host") == [f"127.0.0.1:{server.port}"]
    assert header_values(record, "X-Forwarded-Proto") == ["http"]
    assert header_values(record, "X-Forwarded-Port") == [str(server.port)]
    assert header_values(record, "X-Forwarded-Prefix") == ["/session/s1"]
    assert header_values(record, "X-Forwarded-Server") == []
    assert header_values(record, "Forwarded") == []


async def test_hop_by_hop_request_headers_never_reach_the_upstream(proxied):
    server, upstream = await proxied()
    await raw_exchange(
        server.port,
        request(
            "GET",
            "/session/s1/hop",
            "X-Secret: 1",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "Proxy-Connection: keep-alive",
            "X-Kept: yes",
            host=server.host,
            connection="close, X-Secret",
        ),
    )
    names = {name.lower() for name, _ in upstream.app[SEEN][0]["headers"]}
    assert names.isdisjoint({"x-secret", "keep-alive", "te", "proxy-authorization", "proxy-connection", "connection"})
    assert "x-kept" in names


async def test_expect_continue_is_answered_by_the_edge(proxied):
    server, upstream = await proxied()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            request(
                "POST",
                "/session/s1/upload",
                "Content-Length: 5",
                "Expect: 100-continue",
                host=server.host,
                connection="close",
            )
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status, _, _, body = parse_response(await asyncio.wait_for(reader.read(), 10))
    finally:
        writer.close()
    assert status == 200
    assert json.loads(body)["body"] == "hello"
    assert header_values(upstream.app[SEEN][0], "Expect") == []


async def test_request_length_framing_is_kept(proxied, client):
    server, upstream = await proxied()
    async with client.post(server.url("/session/s1/len"), data=b"x" * 1000) as resp:
        record = await resp.json()
    assert header_values(record, "Content-Length") == ["1000"]
    assert header_values(record, "Transfer-Encoding") == []

    async def chunks():
        yield b"ab"
        yield b"cd"

    async with client.post(server.url("/session/s1/chunked"), data=chunks()) as resp:
        record = await resp.json()
    assert record["body"] == "abcd"
    assert header_values(record, "Content-Length") == []


# --- responses --------------------------------------------------------------------------------


@pytest.mark.parametrize("code, reason", [(299, "Custom Reason"), (418, "I'm a teapot"), (404, "Not Here"), (503, "Busy Upstream")])
async def test_status_and_reason_pass_through(proxied, client, code, reason):
    server, upstream = await proxied()
    async with client.get(server.url(f"/session/s1/status/{code}"), params={"reason": reason}) as resp:
        assert (resp.status, resp.reason) == (code, reason)
        assert await resp.text() == "status body"


async def test_every_set_cookie_survives(proxied, client):
    server, upstream = await proxied()
    async with client.get(server.url("/session/s1/cookies"), headers={"Cookie": "edge_session=s1"}) as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly", 'c="x y"; Path=/; Max-Age=60']


async def test_gzip_body_arrives_compressed_and_byte_identical(proxied, client):
    server, upstream = await proxied()
    async with client.get(server.url("/session/s1/gzip"), headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(GZIP_BODY))
        assert await resp.read() == GZIP_BODY
    assert header_values(upstream.app[SEEN][0], "Accept-Encoding") == ["gzip"]


async def test_hop_by_hop_response_headers_never_reach_the_client(proxied, client):
    server, upstream = await proxied()
    async with client.get(upstream.url("/connection-listed")) as direct:
        assert direct.headers["X-Up"] == "upstream-secret"  # the upstream really sends it
    async with client.get(server.url("/session/s1/connection-listed")) as resp:
        assert "X-Up" not in resp.headers
        assert "Keep-Alive" not in resp.headers
        assert resp.headers["X-Kept"] == "yes"
        assert await resp.text() == "listed"


async def test_upstream_connection_listed_header_is_dropped_from_raw_responses(edge, serve):
    upstream = await raw_upstream(
        canned(b"HTTP/1.1 200 OK\r\nConnection: X-Up, close\r\nX-Up: secret\r\nX-Other: kept\r\nContent-Length: 2\r\n\r\nok")
    )
    try:
        server = await edge()
        await post_route(server.origin, "s1", upstream.origin)
        data = await raw_exchange(server.port, request("GET", "/session/s1/", host=server.host, connection="close"))
        status, _, headers, body = parse_response(data)
    finally:
        await upstream.close()
    names = {name.lower() for name, _ in headers}
    assert status == 200 and body == b"ok"
    assert "x-up" not in names and "x-other" in names


@pytest.mark.parametrize(
    "location, public",
    [
        ("{up}/next?x=1", "{edge}/session/s1/next?x=1"),
        ("{up}", "{edge}/session/s1/"),
        ("{up}?x=%2F", "{edge}/session/s1/?x=%2F"),
        ("/login?next=%2Fa", "/session/s1/login?next=%2Fa"),
        ("/session/s1/already", "/session/s1/already"),
        ("relative/page", "relative/page"),
        ("https://example.com/elsewhere", "https://example.com/elsewhere"),
        ("//cdn.example.com/x", "//cdn.example.com/x"),
        ("{up}0/other-port", "{up}0/other-port"),
        ("http://127.0.0.1/port-80", "http://127.0.0.1/port-80"),
    ],
)
async def test_location_is_rewritten_to_the_public_session_url(proxied, client, location, public):
    server, upstream = await proxied()
    location = location.format(up=upstream.origin, edge=server.origin)
    async with client.get(server.url("/session/s1/redirect"), params={"to": location}, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == public.format(up=upstream.origin, edge=server.origin)


async def test_location_uses_the_forwarded_scheme_of_a_trusted_proxy(proxied, client):
    server, upstream = await proxied()
    async with client.get(
        server.url("/session/s1/redirect"),
        params={"to": upstream.url("/x")},
        headers={"Host": "edit.amelia.webordinary.com", "X-Forwarded-Proto": "https"},
        allow_redirects=False,
    ) as resp:
        assert resp.headers["Location"] == "https://edit.amelia.webordinary.com/session/s1/x"


def test_ipv6_upstreams_get_a_bracketed_host():
    target = URL("http://[::1]:4321")
    assert upstream_host(target) == "[::1]:4321"
    assert public_location("http://[::1]:4321/x", target, "/session/s1", "https://edit.test") == "https://edit.test/session/s1/x"
    assert public_location("http://127.0.0.1/x", URL("http://127.0.0.1:80"), "", "http://h") == "http://h/x"


# --- streaming ----------------------------------------------------------------------------------


async def test_large_bodies_stream_both_ways_with_flat_memory(proxied, client):
    server, upstream = await proxied()
    total = 200 * MiB
    gc.collect()
    baseline = peak = vm_rss()

    async def upload():
        nonlocal peak
        for index, piece in enumerate(pattern_bytes(total)):
            if index % 64 == 0:
                peak = max(peak, vm_rss())
            yield piece

    async with client.post(server.url("/session/s1/sink"), data=upload()) as resp:
        assert resp.status == 200
        assert await resp.json() == {"length": total, "sha256": pattern_sha256(total)}
    assert peak - baseline < 64 * MiB, f"upload grew RSS by {(peak - baseline) // MiB} MiB"

    digest, length, chunks = hashlib.sha256(), 0, 0
    async with client.get(server.url(f"/session/s1/bytes/{total}")) as resp:
        assert resp.headers["Content-Length"] == str(total)
        async for chunk in resp.content.iter_chunked(CHUNK):
            digest.update(chunk)
            length += len(chunk)
            chunks += 1
            if chunks % 64 == 0:
                peak = max(peak, vm_rss())
    assert (length, digest.hexdigest()) == (total, pattern_sha256(total))
    assert peak - baseline < 64 * MiB, f"download grew RSS by {(peak - baseline) // MiB} MiB"


async def test_request_body_is_forwarded_chunk_by_chunk(proxied, client):
    """The upstream echoes each piece back while the client still holds the rest of the body."""
    server, upstream = await proxied()
    echoed: asyncio.Queue[bytes] = asyncio.Queue()
    pieces = [b"first piece|", b"second piece|", b"third piece|"]

    async def body():
        for piece in pieces:
            yield piece
            # The next piece is only sent once this one came back through the edge.
            received = b""
            while not received.endswith(b"|"):
                received += await asyncio.wait_for(echoed.get(), 10)
            assert received == piece

    async def post():
        async with client.post(server.url("/session/s1/duplex"), data=body()) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                await echoed.put(chunk)

    await asyncio.wait_for(post(), 30)


async def test_sse_events_arrive_while_the_upstream_holds_the_response_open(proxied, client):
    server, upstream = await proxied()
    async with client.get(server.url("/session/s1/sse"), headers={"Accept": "text/event-stream"}) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        assert first == b"data: one\n\n"
        assert not upstream.app[SECOND_SENT].is_set()
        upstream.app[RELEASE].set()
        second = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)
        assert second == b"data: two\n\n"


async def test_a_stream_may_outlive_the_first_byte_timeout(proxied, client):
    server, upstream = await proxied(first_byte_timeout=0.3)
    async with client.get(server.url("/session/s1/trickle"), params={"chunks": "8", "interval": "0.1"}) as resp:
        assert resp.status == 200
        assert await resp.text() == "".join(f"chunk {i}\n" for i in range(8))


async def test_a_slow_upload_is_not_cut_by_the_first_byte_timeout(proxied, client):
    server, upstream = await proxied(first_byte_timeout=0.3)

    async def slow():
        for _ in range(8):
            await asyncio.sleep(0.1)
            yield b"x" * 100

    async with client.post(server.url("/session/s1/sink"), data=slow()) as resp:
        assert resp.status == 200
        assert (await resp.json())["length"] == 800


# --- errors -------------------------------------------------------------------------------------


async def test_unknown_session_is_404_json_or_html(edge, client):
    server = await edge()
    async with client.get(server.url("/session/nobody/")) as resp:
        assert resp.status == 404
        body = await resp.json()
        assert body["success"] is False and "nobody" in body["error"]
    async with client.get(server.url("/session/nobody/"), headers={"Accept": "text/html,*/*;q=0.8"}) as resp:
        assert resp.status == 404
        assert resp.content_type == "text/html"
        assert "<title>404 Not Found</title>" in await resp.text()


async def test_refused_upstream_is_502(edge, client):
    server = await edge()
    await post_route(server.origin, "s1", f"http://127.0.0.1:{free_port()}")
    async with client.get(server.url("/session/s1/")) as resp:
        assert resp.status == 502
        body = await resp.json()
        assert body["success"] is False and body["error"]


async def _reset_mid_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Ty")
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close_mid_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n")
    await writer.drain()


@pytest.mark.parametrize(
    "handler",
    [_reset_mid_headers, _close_mid_headers, canned(b"NOT HTTP AT ALL\r\n\r\n"), canned(b"")],
    ids=["reset", "close", "garbage", "empty"],
)
async def test_broken_upstream_answers_is_502(edge, client, handler):
    upstream = await raw_upstream(handler)
    try:
        server = await edge()
        await post_route(server.origin, "s1", upstream.origin)
        async with client.get(server.url("/session/s1/"), headers={"Accept": "text/html"}) as resp:
            assert resp.status == 502
            assert resp.content_type == "text/html"
        assert upstream.connections >= 1
    finally:
        await upstream.close()


async def test_upstream_cut_mid_body_cuts_the_client(edge, client):
    upstream = await raw_upstream(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b"))
    try:
        server = await edge()
        await post_route(server.origin, "s1", upstream.origin)
        async with client.get(server.url("/session/s1/")) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    finally:
        await upstream.close()


async def test_slow_upstream_is_504(proxied, client):
    server, upstream = await proxied(first_byte_timeout=0.3)
    async with client.get(server.url("/session/s1/hang")) as resp:
        assert resp.status == 504
        assert (await resp.json())["success"] is False
    async with client.post(server.url("/session/s1/hang"), data=b"body") as resp:
        assert resp.status == 504


async def test_starting_route_is_503_with_retry_after(edge, client):
    server = await edge()
    server.app[keys.SESSIONS].set(Route("s2", None, RouteState.STARTING, detail="astro dev starting", retry_after=3))
    async with client.get(server.url("/session/s2/")) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "3"
        body = await resp.json()
        assert body["success"] is False and body["state"] == "starting"
    async with client.get(server.url("/session/s2/"), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "3"
        page = await resp.text()
        assert '<meta http-equiv="refresh" content="3">' in page


async def test_failed_route_is_502_with_its_log(edge, client):
    server = await edge()
    server.app[keys.SESSIONS].set(Route("s3", None, RouteState.FAILED, detail="SyntaxError in astro.config.mjs"))
    async with client.get(server.url("/session/s3/"), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 502
        assert "SyntaxError in astro.config.mjs" in await resp.text()


async def test_upstream_error_statuses_are_not_replaced(proxied, client):
    server, upstream = await proxied()
    async with client.get(server.url("/session/s1/status/502"), headers={"Accept": "text/html"}) as resp:
        assert resp.status == 502
        assert await resp.text() == "status body"


async def test_session_urls_are_built_with_encoded_targets(proxied, client):
    """aiohttp's client gets the upstream URL as encoded: it must not re-quote it."""
    server, upstream = await proxied()
    async with client.get(URL(server.url("/session/s1/x%2Fy?a=%2F%2B"), encoded=True)) as resp:
        record = await resp.json()
    assert record["raw_path"] == "/x%2Fy?a=%2F%2B"
