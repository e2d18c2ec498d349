"""The fast path (edge/fastpath.py): plain GETs to ready previews, proxied below aiohttp.

It must be invisible: the upstream, the client and the log see what aiohttp's
path gives them, and every other request goes to aiohttp's path with the
rest of its connection.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace

import pytest
from aiohttp import web

from edge.fastpath import FAST_PATH
from edge.proxylog import JsonLines, ProxyLog
from edge.server import start_edge
from tests.support.rawhttp import open_raw, read_head, read_response, request
from tests.support.routes import add_route
from tests.support.upstreams import app_with, canned, raw_upstream

pytestmark = pytest.mark.both_loops  # code on transports: asyncio's loop and uvloop's

# Headers only one of the two servers writes by itself (aiohttp's server signs its answers).
OWN_HEADERS = {"date", "server"}


def fast(edge_server):
    return edge_server.app[FAST_PATH]


async def test_plain_gets_take_the_fast_path_and_anything_else_hands_the_connection_over(edge, recording_upstream):
    server = await edge()
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    for n in (1, 2):
        writer.write(request("GET", f"/session/s1/page?n={n}"))
        response = await read_response(reader)
        assert response is not None and response.status == 200
        assert response.body == f"GET /page?n={n} 0".encode()
        assert response.headers["X-Edge-Session"] == "s1"
    assert (fast(server).proxied, fast(server).handed_over) == (2, 0)
    # A body: aiohttp's path answers it, on the same connection, and what follows.
    writer.write(request("POST", "/session/s1/form", headers={"Content-Length": "3"}, body=b"a=1"))
    response = await read_response(reader)
    assert response is not None and response.body == b"POST /form 3"
    writer.write(request("GET", "/session/s1/after"))
    response = await read_response(reader)
    assert response is not None and response.body == b"GET /after 0"
    assert (fast(server).proxied, fast(server).handed_over) == (2, 1)
    writer.close()
    seen = recording_upstream.seen[0]
    assert seen.headers["Host"] == recording_upstream.origin.removeprefix("http://")
    assert seen.headers["X-Forwarded-Prefix"] == "/session/s1"


async def test_requests_the_fast_path_leaves_to_aiohttp(edge, recording_upstream):
    server = await edge()
    add_route(server, "s1", recording_upstream.origin)
    cases = [
        request("HEAD", "/session/s1/x"),
        request("GET", "/session/s1/x", version="1.0"),
        request("GET", "/session/s1/x", headers={"Upgrade": "websocket", "Connection": "Upgrade"}),
        request("GET", "/session/nobody/x"),  # no route: aiohttp's 404 page
        request("GET", "/session/s1"),  # the 307 to the slash
        request("GET", "/api/health"),
        b"GET /session/s1/x HTTP/1.1\r\nHost: evil.example\r\n\r\n",  # 421
    ]
    for raw in cases:
        reader, writer = await open_raw(server.port)
        writer.write(raw)
        await read_head(reader)
        writer.close()
    assert fast(server).proxied == 0
    assert fast(server).handed_over == len(cases)


async def test_both_paths_send_the_same_request_and_answer_and_log_the_same_changes(edge, recording_upstream):
    """The same GET through an edge with the fast path and one without: upstream, client and log agree."""
    results = []
    for fast_path in (True, False):
        stream = io.StringIO()
        log = ProxyLog([JsonLines(stream=stream)])
        server = await edge(proxy_log=log, fast_path=fast_path)
        add_route(server, "s1", recording_upstream.origin)
        reader, writer = await open_raw(server.port)
        headers = {
            "Accept": "text/css,*/*;q=0.1",
            "Cookie": "theme=dark; edge_session=s1",
            "X-Forwarded-For": "203.0.113.9",
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop",
            "User-Agent": "test/1.0",
        }
        writer.write(request("GET", "/session/s1/style.css?v=%2F1", headers=headers))
        response = await read_response(reader)
        writer.close()
        assert response is not None and response.status == 200
        log.publish()
        await asyncio.sleep(0)  # the log line is written at the end of the loop turn
        record = json.loads(stream.getvalue().splitlines()[-1])
        upstream_seen = recording_upstream.seen[-1]
        results.append(
            (
                sorted((k.lower(), v) for k, v in upstream_seen.headers.items()),
                upstream_seen.path,
                sorted((k.lower(), v) for k, v in response.headers.items() if k.lower() not in OWN_HEADERS),
                response.body,
                record["changes"],
                (record["status"], record["bytesOut"], record["path"], record["upstream"], record["match"]),
            )
        )
        assert fast(server).proxied == 1 if fast_path else FAST_PATH not in server.app
    assert results[0] == results[1]


async def test_pipelined_gets_are_answered_in_order(edge, recording_upstream):
    server = await edge()
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    writer.write(b"".join(request("GET", f"/session/s1/{n}") for n in range(5)))
    bodies = [(await read_response(reader)).body for _ in range(5)]
    writer.close()
    assert bodies == [f"GET /{n} 0".encode() for n in range(5)]
    assert fast(server).proxied == 5


async def test_an_upstream_that_drops_a_kept_alive_connection_gets_the_request_again(edge):
    """The upstream answers one request per connection and then closes it unanswered: the edge retries."""
    connections = 0

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nconn %d" % (len(b"conn %d" % number), number))
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request on this connection is dropped
        writer.close()

    async with await raw_upstream(one_answer_per_connection) as upstream:
        server = await edge()
        add_route(server, "s1", upstream.origin)
        reader, writer = await open_raw(server.port)
        writer.write(request("GET", "/session/s1/a"))
        first = await read_response(reader)
        writer.write(request("GET", "/session/s1/b"))
        second = await read_response(reader)
        writer.close()
    assert first is not None and first.body == b"conn 1"
    assert second is not None and second.status == 200 and second.body == b"conn 2"
    assert fast(server).handed_over == 1


async def test_chunked_and_close_delimited_bodies_reach_the_client_whole(edge):
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstreamed ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"until close")
        writer.close()

    async with await raw_upstream(chunked) as chunked_upstream, await raw_upstream(until_close) as closing_upstream:
        server = await edge()
        add_route(server, "chunked", chunked_upstream.origin)
        add_route(server, "closing", closing_upstream.origin)
        reader, writer = await open_raw(server.port)
        for session, body in (("chunked", b"hello world"), ("closing", b"streamed until close"), ("chunked", b"hello world")):
            writer.write(request("GET", f"/session/{session}/x"))
            response = await read_response(reader)
            assert response is not None and response.body == body
            assert response.headers["Transfer-Encoding"] == "chunked"
        writer.close()
    assert fast(server).proxied == 3


async def test_an_upstream_that_breaks_off_mid_body_cuts_the_client_connection(edge):
    stream = io.StringIO()
    log = ProxyLog([JsonLines(stream=stream)])
    broken = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    async with await raw_upstream(broken) as upstream:
        server = await edge(proxy_log=log)
        add_route(server, "s1", upstream.origin)
        reader, writer = await open_raw(server.port)
        writer.write(request("GET", "/session/s1/x"))
        head = await read_head(reader)
        async with asyncio.timeout(10):
            rest = await reader.read()  # the connection ends short of Content-Length
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100" in head
    assert rest == b"only part"
    log.publish()
    await asyncio.sleep(0)
    record = json.loads(stream.getvalue().splitlines()[-1])
    assert record["error"].startswith("stream broke mid-body")


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(edge, recording_upstream):
    server = await edge(keepalive_timeout=0.3)
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/x"))
    assert (await read_response(reader)).status == 200
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the edge
    writer.close()


async def test_stopping_lets_an_answer_in_progress_finish(settings, serve):
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(0.5)
        return web.Response(text="finished")

    upstream = await serve(app_with({"GET /{tail:.*}": slow}))
    running = await start_edge(replace(settings, port=0, drain_seconds=5))
    add_route(running.runner, "s1", upstream.origin)
    reader, writer = await open_raw(running.port)
    idle_reader, idle_writer = await open_raw(running.port)
    writer.write(request("GET", "/session/s1/slow"))
    await started.wait()
    stopping = asyncio.create_task(running.runner.cleanup())
    response = await read_response(reader)
    async with asyncio.timeout(10):
        await stopping
    assert response is not None and response.body == b"finished"
    assert response.headers["Connection"] == "close"
    async with asyncio.timeout(5):
        assert await idle_reader.read() == b""  # the idle connection was closed at once
    writer.close()
    idle_writer.close()
