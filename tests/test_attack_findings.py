"""Raw-socket tests for what an attacker tried against the edge, on both request paths.

Every test runs with the fast path on and off (``both_paths``): whichever
path a request takes, the answer is the same.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.support.rawhttp import closed_by_peer, open_raw, read_response, request
from tests.support.routes import add_route
from tests.support.upstreams import raw_upstream

pytestmark = [pytest.mark.both_paths, pytest.mark.both_loops]


def status_line(data: bytes) -> bytes:
    return data.partition(b"\r\n")[0]


@pytest.mark.parametrize(
    "extra",
    [
        {"X-Big": "a" * 20_000},  # one 20 KB header line
        {"X-Big": "a" * 60_000},  # one 60 KB header line
        {f"X-F{n}": "v" for n in range(300)},  # 300 header fields
        {f"X-F{n}": "v" for n in range(129)},  # one past aiohttp's 128
        {f"X-F{n}": "v" * 150 for n in range(110)},  # 17 KB in fields within every per-line limit
    ],
    ids=["20k-line", "60k-line", "300-fields", "129-fields", "17k-head"],
)
async def test_a_head_past_the_limits_is_refused_and_never_proxied(edge, recording_upstream, extra):
    server = await edge()
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/x", headers=extra))
    answer = await closed_by_peer(reader)
    writer.close()
    assert status_line(answer) in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 431 Request Header Fields Too Large")
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["success"] is False and body["error"]
    assert recording_upstream.seen == []


async def test_a_head_sent_in_pieces_meets_the_same_limit(edge, recording_upstream):
    server = await edge()
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    raw = request("GET", "/session/s1/x", headers={f"X-F{n}": "v" * 150 for n in range(110)})
    for start in range(0, len(raw), 1000):
        writer.write(raw[start : start + 1000])
        await writer.drain()
        await asyncio.sleep(0)
    answer = await closed_by_peer(reader)
    writer.close()
    assert status_line(answer) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert recording_upstream.seen == []


async def test_a_head_within_the_limits_is_proxied(edge, recording_upstream):
    server = await edge()
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/x", headers={f"X-F{n}": "v" * 100 for n in range(100)}))
    response = await read_response(reader)
    writer.close()
    assert response is not None and response.status == 200 and response.body == b"GET /x 0"


async def test_bytes_after_a_complete_upstream_answer_are_discarded_and_its_connection_closed(edge):
    """A dev server that writes a second, unasked-for response: the client gets one answer per request."""
    upstream_saw_eof = asyncio.Event()
    connections = 0

    async def poisoning(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                upstream_saw_eof.set()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nX-Poison: 1\r\nContent-Length: 6\r\n\r\npoison"
            )
            await writer.drain()

    async with await raw_upstream(poisoning) as upstream:
        server = await edge()
        add_route(server, "s1", upstream.origin)
        reader, writer = await open_raw(server.port)
        answers = []
        for n in range(2):
            writer.write(request("GET", f"/session/s1/{n}"))
            answers.append(await read_response(reader))
        async with asyncio.timeout(10):
            await upstream_saw_eof.wait()  # the edge closed the poisoned connection
        # Nothing else arrives for the client: two requests, two answers.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.readline()
        writer.close()
    assert [a.body for a in answers if a is not None] == [b"ok", b"ok"]
    assert all("X-Poison" not in a.headers for a in answers if a is not None)
    assert connections == 2  # a poisoned connection is not used again


async def test_an_upstream_cannot_set_the_edges_own_cookie(edge):
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        b"Set-Cookie: edge_session=other; Path=/\r\n"
        b"Set-Cookie:  edge_session =other2\r\n"
        b"Set-Cookie: theme=dark; Path=/\r\n\r\nok"
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()

    async with await raw_upstream(handler) as upstream:
        server = await edge()
        add_route(server, "s1", upstream.origin)
        reader, writer = await open_raw(server.port)
        cookies = []
        for path, cookie in (("/session/s1/x", ""), ("/session/s1/x", "edge_session=s1"), ("/x", "edge_session=s1")):
            writer.write(request("GET", path, headers={"Cookie": cookie} if cookie else {}))
            response = await read_response(reader)
            assert response is not None and response.status == 200
            cookies.append(response.headers.getall("Set-Cookie", []))
        writer.close()
    edge_cookie = "edge_session=s1; Path=/; HttpOnly; SameSite=Lax"
    assert cookies == [["theme=dark; Path=/", edge_cookie], ["theme=dark; Path=/"], ["theme=dark; Path=/"]]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nBad Header: 1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nX: a\x00b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GARBAGE\r\n\r\n",
    ],
    ids=["space-in-name", "nul", "two-lengths", "garbage"],
)
@pytest.mark.parametrize("accept", ["application/json", "text/html"])
async def test_parser_errors_answer_in_the_documented_shape_with_one_warning(edge, caplog, raw, accept):
    server = await edge()
    raw = raw.replace(b"Host: localhost\r\n", f"Host: localhost\r\nAccept: {accept}\r\n".encode())
    with caplog.at_level(logging.DEBUG):
        reader, writer = await open_raw(server.port)
        writer.write(raw)
        answer = await closed_by_peer(reader)
        writer.close()
        await asyncio.sleep(0.05)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_line(answer) == b"HTTP/1.1 400 Bad Request"
    if accept == "text/html" and not raw.startswith(b"GARBAGE"):
        assert b"Content-Type: text/html" in head and body.startswith(b"<!doctype html>")
    else:
        assert b"Content-Type: application/json" in head
        assert json.loads(body)["success"] is False
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1 and records[0].exc_info is None
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_flood_of_bad_requests_logs_a_bounded_number_of_lines(edge, caplog):
    server = await edge()
    with caplog.at_level(logging.WARNING):
        for _ in range(30):
            reader, writer = await open_raw(server.port)
            writer.write(b"GET /x HTTP/1.1\r\nBad Header: 1\r\n\r\n")
            assert status_line(await closed_by_peer(reader)) == b"HTTP/1.1 400 Bad Request"
            writer.close()
    assert 1 <= len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 5
