"""The WebSocket relay (Vite's HMR socket) against real WebSocket upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Awaitable, TypeVar

import aiohttp
import pytest
from aiohttp import WSMsgType

from edge import keys
from edge.proxylog import ProxyLog
from edge.server import start_edge
from edge.websocket import SOCKETS
from tests.conftest import RunningServer, free_port
from tests.support.polling import wait_until
from tests.support.routes import add_route
from tests.support.websocket import PROTOCOLS, RawClient, WsUpstream, pattern, silent_upstream

MiB = 1024 * 1024
API_TOKEN = "test-token"
T = TypeVar("T")
WAIT = 10.0  # the bound on every wait: a relay that hangs fails the test instead of stalling it
BOUNDED = aiohttp.ClientWSTimeout(ws_receive=WAIT, ws_close=WAIT)

# Every test runs with the fast path on and off: the two request paths answer alike.
pytestmark = [pytest.mark.timeout(120), pytest.mark.both_paths, pytest.mark.both_loops]


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, WAIT)


@pytest.fixture
async def upstream(serve) -> tuple[WsUpstream, RunningServer]:
    recorder = WsUpstream()
    return recorder, await serve(recorder.app())


@pytest.fixture
async def relay(edge, upstream):
    """An edge whose session ``s1`` points at the recording upstream; returns (edge, recorder, log)."""
    recorder, server = upstream
    log = ProxyLog([])
    running = await edge(proxy_log=log, api_token=API_TOKEN)
    add_route(running, "s1", server.origin)
    return running, recorder, log


@pytest.fixture
async def client():
    async with aiohttp.ClientSession() as session:
        yield session


def ws_url(server: RunningServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


# 1. Handshake: upstream first, its subprotocol, query and headers forwarded.


@pytest.mark.parametrize(("offered", "chosen"), [(("foo", "vite-hmr"), "vite-hmr"), (("vite-ping",), "vite-ping")])
async def test_browser_gets_the_subprotocol_the_upstream_chose(relay, client, upstream, offered, chosen):
    edge, recorder, _ = relay
    _, up = upstream
    token = "a%2Bb+c%3D~x_Y-z"
    async with client.ws_connect(
        ws_url(edge, f"/session/s1/?token={token}"),
        timeout=BOUNDED,
        protocols=offered,
        headers={
            "Origin": f"http://127.0.0.1:{edge.port}",
            "Cookie": "edge_session=s1; theme=dark",
            "X-Custom": "kept",
        },
    ) as ws:
        assert ws.protocol == chosen
        shake = recorder.handshakes[0]
        assert shake.protocol == chosen
        offered_upstream = [p.strip() for v in shake.headers.getall("Sec-WebSocket-Protocol") for p in v.split(",")]
        assert offered_upstream == list(offered)
        assert shake.raw_path == f"/?token={token}"
        assert shake.headers["Host"] == f"127.0.0.1:{up.port}"
        assert shake.headers["Origin"] == f"http://127.0.0.1:{edge.port}"
        assert shake.headers.getall("Cookie") == ["theme=dark"]
        assert shake.headers["X-Custom"] == "kept"
        assert shake.headers["X-Forwarded-Prefix"] == "/session/s1"


async def test_no_subprotocol_when_the_upstream_chooses_none(relay):
    edge, recorder, _ = relay
    raw = await RawClient.connect(edge.port, "/session/s1/noproto", {"Sec-WebSocket-Protocol": "vite-hmr"})
    try:
        assert raw.status == 101
        assert recorder.handshakes[0].protocol is None
        assert "sec-websocket-protocol" not in raw.headers
        assert raw.headers["x-edge-session"] == "s1"
    finally:
        await raw.aclose()


async def test_an_invalid_handshake_is_refused_before_the_upstream(relay):
    edge, recorder, _ = relay
    raw = await RawClient.connect(edge.port, "/session/s1/", {"Sec-WebSocket-Key": "not-a-key"})
    await raw.aclose()
    assert raw.status == 400
    assert recorder.handshakes == []


# 2. Frames: text, binary, ping/pong, large, in order.


async def test_text_and_binary_pass_unchanged_and_in_order(relay, client):
    edge, recorder, _ = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        await ws.send_str("héllo ✓")
        assert (await ws.receive()).data == "héllo ✓"
        await ws.send_bytes(b"\x00\xff\x10")
        assert (await ws.receive()).data == b"\x00\xff\x10"

        for i in range(500):
            await ws.send_str(f"b{i}")
        for i in range(500):
            assert (await ws.receive()).data == f"b{i}"
        assert [data for _, data in recorder.received[2:]] == [f"b{i}" for i in range(500)]

        await ws.send_str("!burst 1000")
        assert [(await ws.receive()).data for _ in range(1000)] == [f"m{i}" for i in range(1000)]


async def test_pings_and_pongs_are_relayed_not_answered_by_the_edge(relay, client):
    edge, recorder, _ = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS, autoping=False) as ws:
        await ws.ping(b"from-browser")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"from-browser")
        assert recorder.received == [(WSMsgType.PING, b"from-browser")]

        await ws.send_str("!ping from-upstream")
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.PING, b"from-upstream")
        await ws.pong(msg.data)
        await wait_until(lambda: len(recorder.received) == 2, "both messages at the upstream", WAIT)
        assert recorder.received[1] == (WSMsgType.PONG, b"from-upstream")


async def test_8_mib_messages_both_ways(relay, client):
    edge, recorder, _ = relay
    big = pattern(8 * MiB + 3)
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS, max_msg_size=0) as ws:
        await ws.send_bytes(big)
        echoed = await ws.receive()
        assert echoed.type is WSMsgType.BINARY and echoed.data == big
        assert recorder.received == [(WSMsgType.BINARY, big)]

        text = "x" * (8 * MiB)
        await ws.send_str(text)
        assert (await ws.receive()).data == text

        await ws.send_str(f"!big {8 * MiB + 5}")
        assert (await ws.receive()).data == pattern(8 * MiB + 5)


async def test_messages_behind_a_full_buffer_keep_their_order(relay):
    """Frames are written through as they are parsed only while nothing waits before them.

    An 8 MiB message fills the edge's buffer toward a browser that reads
    slowly, so the small ones after it go the pumps' way; none overtakes another.
    """
    edge, _, log = relay
    raw = await RawClient.connect(edge.port, "/session/s1/", {"Sec-WebSocket-Protocol": "vite-hmr"})
    try:
        assert raw.status == 101
        raw.send(0x1, f"!big {8 * MiB}".encode())
        raw.send(0x1, b"!burst 300")
        opcode, payload = await within(raw.frame())
        assert (opcode, len(payload)) == (0x2, 8 * MiB)
        assert payload == pattern(8 * MiB)
        assert [await within(raw.frame()) for _ in range(300)] == [(0x1, f"m{i}".encode()) for i in range(300)]
        raw.send(0x1, b"after")
        assert await within(raw.frame()) == (0x1, b"after")
        raw.send_close(1000)
        assert await within(raw.close_frame()) == (1000, "")
    finally:
        await raw.aclose()
    await wait_until(lambda: log.recent.records, "the proxy log record", WAIT)
    record = log.recent.records[0]
    assert (record["messagesIn"], record["messagesOut"]) == (3, 302)


async def test_a_browser_message_over_the_cap_closes_with_1009(relay, client, monkeypatch):
    monkeypatch.setattr("edge.websocket.MAX_BROWSER_MESSAGE", MiB)
    edge, recorder, _ = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        await ws.send_bytes(b"x" * (MiB + 1))
        msg = await ws.receive()
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    await within(recorder.ended.wait())
    assert recorder.received == []
    assert recorder.closes == [(1001, "")]


async def test_an_idle_socket_outlives_the_server_timeouts(edge, upstream, client):
    """The HMR socket is quiet for minutes: the edge's head and keep-alive timers must not close it."""
    recorder, up = upstream
    running = await edge(header_timeout=0.2, keepalive_timeout=0.2)
    add_route(running, "s1", up.origin)
    async with client.ws_connect(ws_url(running, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        await asyncio.sleep(1.0)  # five times both timeouts
        await ws.send_str("still here")
        assert (await ws.receive()).data == "still here"


# 3. Close codes, both ways; abrupt drops.


async def test_browser_close_code_and_reason_reach_the_upstream(relay, client):
    edge, recorder, log = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        await ws.send_str("hello")
        await ws.receive()
        await ws.close(code=4001, message=b"bye")
        assert ws.close_code == 4001
    await within(recorder.ended.wait())
    assert recorder.closes == [(4001, "bye")]


async def test_upstream_close_code_and_reason_reach_the_browser(relay, client):
    edge, recorder, _ = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        await ws.send_str("!close 4002 upstream done")
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "upstream done")
    await within(recorder.ended.wait())
    assert recorder.sockets[0].close_code == 4002  # the browser's answer came back


async def test_browser_close_while_the_upstream_is_sending(relay, client):
    """Both pumps busy at the close: nothing is lost or raised, the codes still match."""
    edge, recorder, log = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        await ws.send_str("!burst 20000")
        assert (await ws.receive()).data == "m0"
        await ws.close(code=4001, message=b"bye")
        assert ws.close_code == 4001
    await within(recorder.ended.wait())
    assert recorder.closes == [(4001, "bye")]
    await wait_until(lambda: log.recent.records, "the proxy log record", WAIT)
    assert log.recent.records[0]["closeCode"] == 4001
    assert "error" not in log.recent.records[0]


async def test_an_upstream_that_vanishes_becomes_1011_on_the_wire(relay):
    edge, _, log = relay
    raw = await RawClient.connect(edge.port, "/session/s1/", {"Sec-WebSocket-Protocol": "vite-hmr"})
    try:
        assert raw.status == 101
        raw.send(0x1, b"!drop")
        assert await within(raw.close_frame()) == (1011, "upstream connection lost")
    finally:
        await raw.aclose()
    await wait_until(lambda: log.recent.records, "the proxy log record", WAIT)
    record = log.recent.records[0]
    assert record["closeCode"] == 1011
    assert record["error"] == "upstream went away without a close frame"


async def test_a_browser_that_vanishes_closes_the_upstream_with_1001(relay):
    edge, recorder, log = relay
    raw = await RawClient.connect(edge.port, "/session/s1/", {"Sec-WebSocket-Protocol": "vite-hmr"})
    assert raw.status == 101
    await within(recorder.connected.wait())
    raw.abort()
    await within(recorder.ended.wait())
    assert recorder.closes == [(1001, "")]
    await wait_until(lambda: log.recent.records, "the proxy log record", WAIT)
    assert log.recent.records[0]["closeCode"] == 1001
    assert edge.app[SOCKETS].count() == 0


# 4. Removing a session, stopping the edge.


async def test_removing_a_session_closes_its_sockets(relay):
    edge, recorder, _ = relay
    raw = await RawClient.connect(edge.port, "/session/s1/", {"Sec-WebSocket-Protocol": "vite-hmr"})
    try:
        assert raw.status == 101
        await edge.app[keys.SESSIONS].remove("s1")
        assert await within(raw.close_frame()) == (1001, "preview stopped")
        raw.send_close(1001)
    finally:
        await raw.aclose()
    await within(recorder.ended.wait())
    assert recorder.closes == [(1001, "preview stopped")]


async def test_delete_route_closes_its_sockets(relay, client):
    edge, recorder, _ = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        async with client.delete(edge.url("/api/routes/s1"), headers={"Authorization": f"Bearer {API_TOKEN}"}) as resp:
            assert resp.status == 204
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "preview stopped")
    await within(recorder.ended.wait())
    assert recorder.closes == [(1001, "preview stopped")]


async def test_stopping_the_edge_closes_open_sockets_with_1001(settings, upstream):
    recorder, up = upstream
    running = await start_edge(replace(settings, port=0, drain_seconds=3))
    try:
        add_route(running.runner, "s1", up.origin)
        raw = await RawClient.connect(running.port, "/session/s1/", {"Sec-WebSocket-Protocol": "vite-hmr"})
        assert raw.status == 101
        await within(recorder.connected.wait())
        cleanup = asyncio.create_task(running.runner.cleanup())
        assert await within(raw.close_frame()) == (1001, "edge shutting down")
        raw.send_close(1001)
        await within(cleanup)
        await raw.aclose()
    finally:
        await running.runner.cleanup()
    assert recorder.closes == [(1001, "edge shutting down")]


async def test_a_socket_that_opens_while_the_edge_stops_is_closed_too(settings, upstream):
    recorder, up = upstream
    running = await start_edge(replace(settings, port=0, drain_seconds=3))
    try:
        app = running.runner.app
        add_route(app, "s1", up.origin)
        connecting = asyncio.create_task(RawClient.connect(running.port, "/session/s1/gated"))
        await within(recorder.waiting_at_gate.wait())
        await app[SOCKETS].close_all()  # what the edge's on_shutdown does
        recorder.gate.set()
        raw = await within(connecting)
        assert raw.status == 101
        assert await within(raw.close_frame()) == (1001, "edge shutting down")
        await raw.aclose()
    finally:
        await running.runner.cleanup()


# 5. Upstream failures and routing.


async def test_a_dead_upstream_is_a_502(relay, client):
    edge, _, log = relay
    add_route(edge, "s1", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS)
    assert refused.value.status == 502
    await wait_until(lambda: log.recent.records, "the proxy log record", WAIT)
    assert log.recent.records[0]["status"] == 502


@pytest.mark.parametrize("status", [403, 400])
async def test_an_upstream_refusal_keeps_its_status(relay, client, status):
    edge, _, _ = relay
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(ws_url(edge, f"/session/s1/status/{status}"), timeout=BOUNDED, protocols=PROTOCOLS)
    assert refused.value.status == status


async def test_an_upstream_that_never_answers_the_upgrade_is_a_504(edge, client):
    silent = await silent_upstream()
    try:
        running = await edge(first_byte_timeout=0.5)
        add_route(running, "s1", silent.origin)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(ws_url(running, "/session/s1/?token=t"), timeout=BOUNDED, protocols=PROTOCOLS)
        assert refused.value.status == 504
        assert silent.connections == 1
    finally:
        await silent.close()


async def test_the_cookie_routes_the_root_socket_without_a_redirect(relay, client):
    edge, recorder, _ = relay
    async with client.ws_connect(
        ws_url(edge, "/?token=abc"),
        timeout=BOUNDED,
        protocols=("vite-hmr",),
        headers={"Cookie": "edge_session=s1", "Sec-Fetch-Mode": "websocket", "Accept": "text/html"},
    ) as ws:
        assert ws.protocol == "vite-hmr"
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
    shake = recorder.handshakes[0]
    assert shake.raw_path == "/?token=abc"
    assert "Cookie" not in shake.headers


async def test_host_mode_routes_the_socket(relay, client):
    edge, recorder, _ = relay
    async with client.ws_connect(
        ws_url(edge, "/?token=abc"),
        timeout=BOUNDED,
        protocols=("vite-hmr",),
        headers={"Host": "s1--edit.amelia.webordinary.com"},
    ) as ws:
        await ws.send_str("hi")
        assert (await ws.receive()).data == "hi"
    assert recorder.handshakes[0].raw_path == "/?token=abc"


# 6. Host allowlist.


async def test_an_unknown_host_never_reaches_the_upstream(relay, client):
    edge, recorder, _ = relay
    raw = await RawClient.connect(edge.port, "/session/s1/", {"Host": "evil.example.com"})
    await raw.aclose()
    assert raw.status == 421
    assert recorder.handshakes == []


# 7. The flow record; 8. activity.


async def test_the_flow_record_counts_messages_bytes_and_the_close_code(relay, client):
    edge, _, log = relay
    async with client.ws_connect(ws_url(edge, "/session/s1/?token=secret"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
        await ws.send_str("hello")  # in: 5 bytes; echoed out
        assert (await ws.receive()).data == "hello"
        await ws.send_str("!burst 3")  # in: 8 bytes; out: m0 m1 m2
        for _ in range(3):
            await ws.receive()
        await ws.send_bytes(b"\x01\x02")  # in: 2 bytes; echoed out
        await ws.receive()
        await ws.close(code=4001, message=b"bye")
    await wait_until(lambda: log.recent.records, "the proxy log record", WAIT)
    record = log.recent.records[0]
    assert record["websocket"] is True
    assert record["status"] == 101
    assert (record["messagesIn"], record["bytesIn"]) == (3, 15)
    assert (record["messagesOut"], record["bytesOut"]) == (5, 13)
    assert record["closeCode"] == 4001
    assert "secret" not in record["path"] and "secret" not in record["upstream"]
    assert "error" not in record


async def test_every_frame_counts_as_activity(relay, client):
    edge, recorder, _ = relay
    table = edge.app[keys.SESSIONS]
    async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS, autoping=False) as ws:
        await within(recorder.connected.wait())
        before = table.last_activity["s1"]
        await recorder.sockets[0].send_str("pushed")  # upstream → browser only
        assert (await ws.receive()).data == "pushed"
        await wait_until(lambda: table.last_activity["s1"] > before, "activity from a message", WAIT)
        after_push = table.last_activity["s1"]

        await ws.pong(b"unsolicited")  # browser → upstream only, no answer
        await wait_until(lambda: recorder.received, "the message at the upstream", WAIT)
        await wait_until(lambda: table.last_activity["s1"] > after_push, "activity from a push", WAIT)


async def test_no_errors_are_logged_for_a_normal_session(relay, client, caplog):
    edge, _, _ = relay
    with caplog.at_level(logging.WARNING):
        async with client.ws_connect(ws_url(edge, "/session/s1/"), timeout=BOUNDED, protocols=PROTOCOLS) as ws:
            await ws.send_str("hello")
            await ws.receive()
        await wait_until(lambda: edge.app[keys.PROXY_LOG].recent.records, "the proxy log record", WAIT)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
