"""The edge's server limits, seen from raw sockets: the request-head deadline,
the keep-alive idle timeout, the connection cap, and that none of them cuts
a legitimate long upload, stream or WebSocket; draining on stop, and
``edge serve`` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web

from edge.connguard import HEALTH_RESERVE
from edge.server import start_edge
from tests.conftest import free_port
from tests.support.polling import wait_until
from tests.support.rawhttp import closed_by_peer, open_raw, read_response, refused, request
from tests.support.routes import add_route
from tests.support.upstreams import app_with
from tests.support.websocket import ws_echo

pytestmark = pytest.mark.both_loops  # code on transports: asyncio's loop and uvloop's

HEALTH = request("GET", "/health")
# A head long enough that trickling it takes far longer than the test's header timeout.
PADDED_HEAD = request("GET", "/health", headers={"X-Padding": "p" * 400})
TRICKLE_PAUSE = 0.02


async def trickle(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` a byte at a time until it is all sent or the edge closes; return bytes sent and received."""
    closed = asyncio.ensure_future(closed_by_peer(reader, timeout=30))
    sent = 0
    try:
        for byte in data:
            if closed.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.sleep(TRICKLE_PAUSE)
        received = await closed
    except (ConnectionResetError, BrokenPipeError):
        received = await closed
    finally:
        closed.cancel()
        writer.close()
    return sent, received


async def test_silent_connection_is_closed_after_the_header_timeout(edge):
    server = await edge(header_timeout=1)
    reader, writer = await open_raw(server.port)
    assert await closed_by_peer(reader, timeout=15) == b""
    writer.close()


async def test_trickled_request_head_is_closed_before_it_completes(edge):
    server = await edge(header_timeout=1)
    reader, writer = await open_raw(server.port)
    sent, received = await trickle(writer, reader, PADDED_HEAD)
    assert sent < len(PADDED_HEAD)
    assert received == b""


async def test_next_head_on_a_kept_alive_connection_has_a_deadline_too(edge):
    server = await edge(header_timeout=1)
    reader, writer = await open_raw(server.port)
    writer.write(HEALTH)
    first = await read_response(reader)
    assert first is not None and first.status == 200
    sent, received = await trickle(writer, reader, PADDED_HEAD)
    assert sent < len(PADDED_HEAD)
    assert received == b""


async def test_idle_kept_alive_connection_is_closed(edge):
    server = await edge(header_timeout=60, keepalive_timeout=1)
    reader, writer = await open_raw(server.port)
    writer.write(HEALTH)
    response = await read_response(reader)
    assert response is not None and response.status == 200
    assert await closed_by_peer(reader, timeout=15) == b""
    writer.close()


async def test_a_head_sent_in_time_is_answered_and_the_connection_kept(edge):
    server = await edge(header_timeout=1, keepalive_timeout=30)
    reader, writer = await open_raw(server.port)
    for _ in range(3):
        writer.write(HEALTH)
        response = await read_response(reader)
        assert response is not None and response.status == 200
    writer.close()


async def test_long_upload_stream_and_websocket_outlive_every_timeout(edge, serve):
    """Bodies, streamed responses and WebSockets are not timed by the head deadline nor the idle timeout."""

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for i in range(12):
            await response.write(f"event {i}\n".encode())
            await asyncio.sleep(0.25)
        return response

    upstream = await serve(app_with({"POST /upload": count, "GET /stream": stream, "GET /ws": ws_echo()}))
    server = await edge(header_timeout=1, keepalive_timeout=1, first_byte_timeout=1)
    add_route(server, "s1", upstream.origin)

    async def slow_body():
        for _ in range(12):
            yield b"x" * 1000
            await asyncio.sleep(0.25)

    async with aiohttp.ClientSession() as client:
        async with client.post(server.url("/session/s1/upload"), data=slow_body()) as resp:
            assert resp.status == 200 and await resp.text() == "12000"
        async with client.get(server.url("/session/s1/stream")) as resp:
            assert (await resp.text()).splitlines() == [f"event {i}" for i in range(12)]
        async with client.ws_connect(server.url("/session/s1/ws")) as ws:
            for i in range(3):
                await ws.send_str(f"ping {i}")
                assert (await ws.receive_str(timeout=10)) == f"ping {i}"
                await asyncio.sleep(1)


async def held_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A kept-alive connection the edge has certainly accepted: it answered a request on it."""
    reader, writer = await open_raw(port)
    writer.write(HEALTH)
    response = await read_response(reader)
    assert response is not None and response.status == 200
    return reader, writer


async def answered(port: int) -> bool:
    """Whether a new connection gets an answer to a valid request (False: closed without one)."""
    reader, writer = await open_raw(port)
    try:
        writer.write(request("GET", "/health", headers={"Connection": "close"}))
        response = await read_response(reader)
        return response is not None and response.status == 200
    finally:
        writer.close()


async def test_at_the_cap_a_new_connection_replaces_the_longest_idle_one(edge):
    server = await edge(max_connections=3, header_timeout=60, keepalive_timeout=60)
    held = [await held_connection(server.port) for _ in range(3)]
    assert await answered(server.port)
    assert await closed_by_peer(held[0][0]) == b""
    for reader, writer in held[1:]:
        writer.write(HEALTH)
        response = await read_response(reader)
        assert response is not None and response.status == 200
    for _, writer in held:
        writer.close()


async def busy_edge(edge, serve, cap: int):
    """An edge whose ``cap`` connections all wait for a slow upstream (nothing may be closed to make room)."""
    release = asyncio.Event()
    waiting = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal waiting
        waiting += 1
        await release.wait()
        return web.Response(text="done")

    upstream = await serve(app_with({"GET /slow": slow}))
    server = await edge(max_connections=cap, header_timeout=60, keepalive_timeout=60)
    add_route(server, "s1", upstream.origin)
    busy = [await open_raw(server.port) for _ in range(cap)]
    for _, writer in busy:
        writer.write(request("GET", "/session/s1/slow"))
    await wait_until(lambda: waiting >= cap, f"{cap} requests at the upstream", interval=0.01)
    return server, busy, release


async def test_when_every_connection_is_busy_only_health_checks_are_answered(edge, serve):
    server, busy, release = await busy_edge(edge, serve, 3)
    assert await answered(server.port)  # /health, on a reserve connection
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/slow"))
    answer = await closed_by_peer(reader)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    # The reserve is small: silent connections use it up, then new ones are refused.
    silent = [await open_raw(server.port) for _ in range(HEALTH_RESERVE)]
    await asyncio.sleep(0.1)
    assert not await answered(server.port)
    for _, writer in silent:
        writer.close()
    await asyncio.sleep(0.1)
    assert await answered(server.port)
    release.set()
    for reader, writer in busy:
        response = await read_response(reader)
        assert response is not None and response.body == b"done"
        writer.close()


async def test_trickling_uploads_at_the_cap_neither_lock_out_clients_nor_health_checks(edge, recording_upstream):
    """One client fills the cap with uploads sending a byte at a time: the slowest makes room for new clients."""
    server = await edge(max_connections=5, header_timeout=60, keepalive_timeout=60, body_timeout=60)
    add_route(server, "s1", recording_upstream.origin)
    uploads = [await open_raw(server.port) for _ in range(5)]
    for _, writer in uploads:
        writer.write(request("POST", "/session/s1/upload", headers={"Content-Length": "1000"}, body=b"x"))
    await wait_until(lambda: len(recording_upstream.arrived) >= 5, "five upload heads at the upstream", interval=0.01)
    for _ in range(3):
        assert await answered(server.port)
        reader, writer = await open_raw(server.port)
        writer.write(request("GET", "/session/s1/page"))
        response = await read_response(reader)
        writer.close()
        assert response is not None and response.body == b"GET /page 0"
    closed = 0
    for reader, writer in uploads:
        with contextlib.suppress(TimeoutError):
            closed += await closed_by_peer(reader, timeout=0.2) == b""
        writer.close()
    assert closed >= 1


async def test_idle_websockets_at_the_cap_make_room_for_new_clients(edge, serve):
    upstream = await serve(app_with({"GET /ws": ws_echo()}))
    server = await edge(max_connections=3, header_timeout=60, keepalive_timeout=60)
    add_route(server, "s1", upstream.origin)
    async with aiohttp.ClientSession() as client:
        sockets = [await client.ws_connect(server.url("/session/s1/ws")) for _ in range(3)]
        assert await answered(server.port)
        assert await answered(server.port)
        for ws in sockets:
            await ws.close()


async def test_at_the_cap_the_websocket_quiet_for_longest_makes_room(edge, serve):
    """Among WebSockets, eviction goes by when each last sent something (recorded per read after the
    101, without the head bookkeeping), not by when it opened."""
    upstream = await serve(app_with({"GET /ws": ws_echo()}))
    server = await edge(max_connections=3, header_timeout=60, keepalive_timeout=60)
    add_route(server, "s1", upstream.origin)
    async with aiohttp.ClientSession() as client:
        sockets = [await client.ws_connect(server.url("/session/s1/ws")) for _ in range(3)]
        await asyncio.sleep(0.05)
        await sockets[0].send_str("still here")  # the oldest socket is the one that spoke last
        assert (await sockets[0].receive(timeout=10)).data == "still here"
        assert await answered(server.port)  # one socket had to make room
        gone = await sockets[1].receive(timeout=10)
        assert gone.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        for ws in (sockets[0], sockets[2]):
            await ws.send_str("ping")
            assert (await ws.receive(timeout=10)).data == "ping"
        for ws in sockets:
            await ws.close()


async def test_a_request_body_that_stops_sending_is_closed_after_the_body_timeout(edge, recording_upstream):
    server = await edge(body_timeout=0.5, header_timeout=60, first_byte_timeout=60)
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    writer.write(request("POST", "/session/s1/upload", headers={"Content-Length": "10"}, body=b"abc"))
    assert await closed_by_peer(reader, timeout=10) == b""
    writer.close()
    assert recording_upstream.seen == []  # the upstream never got a whole body


async def test_a_body_that_keeps_sending_outlives_the_body_timeout(edge, recording_upstream):
    server = await edge(body_timeout=0.5)
    add_route(server, "s1", recording_upstream.origin)
    reader, writer = await open_raw(server.port)
    writer.write(request("POST", "/session/s1/upload", headers={"Content-Length": "8"}))
    for _ in range(8):
        await asyncio.sleep(0.25)
        writer.write(b"x")
    response = await read_response(reader)
    writer.close()
    assert response is not None and response.body == b"POST /upload 8"


async def test_one_client_address_is_limited_to_its_share_of_connections(edge):
    server = await edge(max_connections_per_client=2, trusted_proxies=(), header_timeout=60)
    held = [await held_connection(server.port) for _ in range(2)]
    assert not await answered(server.port)
    held[0][1].close()
    await asyncio.sleep(0.1)
    assert await answered(server.port)
    for _, writer in held[1:]:
        writer.close()


async def test_behind_a_trusted_proxy_the_limit_is_per_forwarded_client(edge, recording_upstream):
    server = await edge(max_connections_per_client=2, header_timeout=60)  # loopback is a trusted proxy
    add_route(server, "s1", recording_upstream.origin)

    async def get(client: str) -> tuple[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        reader, writer = await open_raw(server.port)
        writer.write(request("GET", "/session/s1/x", headers={"X-Forwarded-For": client}))
        response = await read_response(reader)
        assert response is not None
        return response.status, (reader, writer)

    first = [await get("203.0.113.7") for _ in range(2)]
    third, third_connection = await get("203.0.113.7")
    other, other_connection = await get("198.51.100.1")
    assert [status for status, _ in first] == [200, 200]
    assert (third, other) == (429, 200)
    for _, (_, writer) in [*first, (third, third_connection), (other, other_connection)]:
        writer.close()


async def test_a_flood_of_idle_connections_neither_locks_clients_out_nor_stays(edge):
    """Twice the cap in silent sockets: a real client is still served, and the deadline clears them all."""
    server = await edge(max_connections=50, header_timeout=2, keepalive_timeout=60)
    idle = [await open_raw(server.port) for _ in range(100)]
    assert await answered(server.port)
    closed = await asyncio.gather(*(closed_by_peer(reader, timeout=15) for reader, _ in idle))
    assert closed == [b""] * 100
    for _, writer in idle:
        writer.close()


async def test_stopping_drains_requests_in_flight_then_cuts_endless_streams(settings, serve):
    release = asyncio.Event()
    arrived: set[str] = set()

    async def slow(request: web.Request) -> web.Response:
        arrived.add("slow")
        await release.wait()
        return web.Response(text="done")

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        arrived.add("endless")
        await asyncio.sleep(3600)
        return response

    upstream = await serve(app_with({"GET /slow": slow, "GET /endless": endless}), handler_cancellation=True)
    running = await start_edge(replace(settings, port=0, drain_seconds=3))
    stopping = None
    try:
        add_route(running.runner, "s1", upstream.origin)
        slow_conn = await open_raw(running.port)
        slow_conn[1].write(request("GET", "/session/s1/slow"))
        endless_conn = await open_raw(running.port)
        endless_conn[1].write(request("GET", "/session/s1/endless"))
        await wait_until(lambda: arrived == {"slow", "endless"}, "both requests at the upstream", interval=0.01)

        stopping = asyncio.ensure_future(running.runner.cleanup())
        # The listening socket closes first.
        await wait_until(lambda: refused(running.port), "the listening socket to close", interval=0.01)
        release.set()
        response = await read_response(slow_conn[0])
        assert response is not None and response.body == b"done"
        assert b"first" in await closed_by_peer(endless_conn[0], timeout=15)
        async with asyncio.timeout(15):
            await stopping
        for _, writer in (slow_conn, endless_conn):
            writer.close()
    finally:
        release.set()
        if stopping is None:
            await running.runner.cleanup()


async def wait_healthy(proc: asyncio.subprocess.Process, url: str) -> None:
    """Until ``edge serve`` says it is healthy; fail at once when it exits first."""
    async with aiohttp.ClientSession() as client:

        async def healthy() -> bool:
            assert proc.returncode is None, f"edge serve exited with {proc.returncode} before it was healthy"
            try:
                async with client.get(url) as resp:
                    return resp.status == 200 and (await resp.json())["status"] == "healthy"
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(healthy, "edge serve to be healthy", 30, interval=0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_edge_serve_answers_health_and_exits_0_on_signal(tmp_path, sig):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "EDGE_HOST": "127.0.0.1", "WORKSPACE_PATH": str(tmp_path / "workspace")}
    with open(tmp_path / "edge.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edge", "serve", env=env, stdout=log, stderr=log)
        try:
            await wait_healthy(proc, f"http://127.0.0.1:{port}/health")
            reader, writer = await held_connection(port)  # an idle kept-alive client must not hold up the exit
            proc.send_signal(sig)
            async with asyncio.timeout(30):
                assert await proc.wait() == 0, (tmp_path / "edge.log").read_text()
            assert await closed_by_peer(reader) == b""
            writer.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
