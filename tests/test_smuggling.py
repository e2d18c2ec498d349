"""Request smuggling: ambiguous framing gets 400 and never reaches the upstream.

Every case is sent on a raw socket to a real edge whose session ``s1``
points at a recording upstream. To prove that nothing reached the upstream
without sleeping, a harmless sentinel request follows on a new connection:
once the upstream has seen it, it must have seen nothing else.
"""

from __future__ import annotations

import pytest

from tests.support.rawhttp import closed_by_peer, open_raw, read_response, request
from tests.support.routes import add_route

pytestmark = pytest.mark.both_loops  # code on transports: asyncio's loop and uvloop's

HEAD = b"POST /session/s1/x HTTP/1.1\r\nHost: localhost\r\n"
HEAD10 = b"POST /session/s1/x HTTP/1.0\r\nHost: localhost\r\n"

AMBIGUOUS = {
    # Let through by aiohttp's parser itself: refused by edge.framing.
    "chunked on HTTP/1.0": HEAD10 + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "gzip, chunked": HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "chunked, chunked": HEAD + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    # Refused by the parser (kept so an aiohttp upgrade or its pure-Python parser cannot regress them).
    "Content-Length and Transfer-Encoding": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Transfer-Encoding and Content-Length": HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "HTTP/1.0 with both": HEAD10 + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "duplicate Content-Length": HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "conflicting Content-Length": HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "Content-Length list": HEAD + b"Content-Length: 5, 5\r\n\r\nhello",
    "signed Content-Length": HEAD + b"Content-Length: +5\r\n\r\nhello",
    "obs-fold": HEAD + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "obs-fold with tab": HEAD + b"X-A: a\r\n\tb\r\nContent-Length: 0\r\n\r\n",
    "obs-fold of Transfer-Encoding": HEAD + b"Transfer-Encoding: gzip\r\n , chunked\r\n\r\n0\r\n\r\n",
    "non-hex chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "0x chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "negative chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "space after chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "overflowing chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    "chunk size with bare LF": HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "xchunked": HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "chunked, gzip": HEAD + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "identity": HEAD + b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
    "two Transfer-Encoding headers": HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space before colon": HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "vertical tab in value": HEAD + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "bare CR in a value": HEAD + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "bare LF line ends": b"POST /session/s1/x HTTP/1.1\nHost: localhost\nContent-Length: 0\n\n",
}


@pytest.fixture
async def routed_edge(edge, recording_upstream):
    server = await edge()
    add_route(server, "s1", recording_upstream.origin)
    return server


async def sentinel_then_seen(server, upstream) -> list[str]:
    """Send a harmless request; once it reached the upstream, list what the upstream saw."""
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/sentinel", headers={"Connection": "close"}))
    response = await read_response(reader)
    writer.close()
    assert response is not None and response.status == 200
    await upstream.wait_for("/sentinel")
    return [f"{s.method} {s.path}" for s in upstream.seen]


@pytest.mark.parametrize("raw", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
async def test_ambiguous_framing_gets_400_and_never_reaches_the_upstream(routed_edge, recording_upstream, raw):
    reader, writer = await open_raw(routed_edge.port)
    writer.write(raw)
    response = await read_response(reader)
    assert response is not None and response.status == 400
    await closed_by_peer(reader)  # nothing after an ambiguous request is read as a request
    writer.close()
    assert await sentinel_then_seen(routed_edge, recording_upstream) == ["GET /sentinel"]


async def test_refusal_is_json_for_api_clients_and_closes_the_connection(routed_edge, recording_upstream):
    reader, writer = await open_raw(routed_edge.port)
    writer.write(AMBIGUOUS["gzip, chunked"] + request("GET", "/session/s1/next"))
    response = await read_response(reader)
    assert response is not None and response.status == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert b'"success": false' in response.body and b"chunked" in response.body
    assert response.headers["Connection"].lower() == "close"
    assert await closed_by_peer(reader) == b""  # the pipelined request after it is not answered
    writer.close()
    assert await sentinel_then_seen(routed_edge, recording_upstream) == ["GET /sentinel"]


async def test_ambiguous_framing_is_refused_before_host_mode_proxying(edge, recording_upstream):
    """Host-mode sessions are proxied by the host middleware: the framing check runs before it."""
    server = await edge()
    add_route(server, "abc", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    writer.write(b"POST /x HTTP/1.0\r\nHost: abc.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    response = await read_response(reader)
    writer.close()
    assert response is not None and response.status == 400
    reader, writer = await open_raw(server.port)
    writer.write(b"GET /sentinel HTTP/1.1\r\nHost: abc.localhost\r\nConnection: close\r\n\r\n")
    response = await read_response(reader)
    writer.close()
    assert response is not None and response.status == 200
    assert [s.path for s in recording_upstream.seen] == ["/sentinel"]


async def test_content_length_then_pipelined_request_are_two_requests(routed_edge, recording_upstream):
    body = b"GET /session/s1/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
    raw = request("POST", "/session/s1/a", headers={"Content-Length": "5"}, body=b"hello") + request(
        "POST", "/session/s1/b", headers={"Content-Length": str(len(body)), "Connection": "close"}, body=body
    )
    reader, writer = await open_raw(routed_edge.port)
    writer.write(raw)
    first = await read_response(reader)
    second = await read_response(reader)
    writer.close()
    assert first is not None and first.body == b"POST /a 5"
    assert second is not None and second.body == f"POST /b {len(body)}".encode()
    seen = [(s.method, s.path, s.body) for s in recording_upstream.seen]
    assert seen == [("POST", "/a", b"hello"), ("POST", "/b", body)]


async def test_a_body_cut_short_never_merges_with_the_next_request(routed_edge, recording_upstream):
    """The upstream connection that carried a half-sent body is not reused for anyone else's request."""
    reader, writer = await open_raw(routed_edge.port)
    writer.write(request("POST", "/session/s1/cut", headers={"Content-Length": "100"}, body=b"x" * 10))
    await recording_upstream.wait_for("/cut", head_only=True)
    writer.close()
    assert await sentinel_then_seen(routed_edge, recording_upstream) == ["GET /sentinel"]


async def test_chunked_body_that_looks_like_a_request_stays_one_body(routed_edge, recording_upstream):
    inner = b"0\r\n\r\nGET /session/s1/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"
    raw = HEAD + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    reader, writer = await open_raw(routed_edge.port)
    writer.write(raw)
    response = await read_response(reader)
    writer.close()
    assert response is not None and response.status == 200
    assert [(s.method, s.path, s.body) for s in recording_upstream.seen] == [("POST", "/x", inner)]


async def test_plain_chunked_upload_and_http10_still_work(routed_edge, recording_upstream):
    reader, writer = await open_raw(routed_edge.port)
    writer.write(HEAD + b"Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
    chunked = await read_response(reader)
    writer.write(request("GET", "/session/s1/old", version="1.0"))
    old = await read_response(reader)
    writer.close()
    assert chunked is not None and chunked.body == b"POST /x 11"
    assert old is not None and old.status == 200 and old.body == b"GET /old 0"
