"""One exchange lifecycle: the same exchanges give the same metrics and idle accounting on every path.

Run with ``EDGE_FAST_PATH`` on and off (``both_paths``): every assertion
below is the same for both, so a path that counted, logged or held the
edge busy in its own way would fail one of the two runs. The exchanges: plain
GETs (the fast path's), a GET held by its upstream (in flight), an upstream
that refuses connections (502, error kind ``connect``) and a WebSocket.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from edge import keys
from edge.fastpath import FAST_PATH
from edge.idle import IDLE
from edge.routing import Route
from tests.conftest import free_port
from tests.test_metrics import AUTH, TOKEN, WAIT, parse, value
from tests.support.polling import wait_until
from tests.support.websocket import PROTOCOLS, WsUpstream

pytestmark = [pytest.mark.timeout(120), pytest.mark.both_paths, pytest.mark.both_loops]


def held_upstream(arrived: asyncio.Event, release: asyncio.Event) -> web.Application:
    """``/held`` answers once ``release`` is set; everything else at once."""

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="released")

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="page " * 20, content_type="text/html")

    app = web.Application()
    app.router.add_get("/held", held)
    app.router.add_get("/{tail:.*}", page)
    return app


async def scrape(client: aiohttp.ClientSession, server) -> dict:
    async with client.get(server.url("/metrics"), headers=AUTH) as resp:
        assert resp.status == 200
        return parse(await resp.text())


async def test_the_same_exchanges_count_and_hold_the_edge_alike_on_both_paths(edge, serve, fast_path):
    arrived, release = asyncio.Event(), asyncio.Event()
    upstream = await serve(held_upstream(arrived, release))
    ws_upstream = await serve(WsUpstream().app())
    server = await edge(api_token=TOKEN)
    table = server.app[keys.SESSIONS]
    table.set(Route("ok", URL(upstream.origin)))
    table.set(Route("dead", URL(f"http://127.0.0.1:{free_port()}")))  # nothing listens: refused
    table.set(Route("ws", URL(ws_upstream.origin)))
    watch = server.app[IDLE]
    records = server.app[keys.PROXY_LOG].recent

    async with aiohttp.ClientSession(timeout=WAIT) as client:
        # Plain GETs: answered, logged, counted; nothing left in flight.
        for _ in range(3):
            async with client.get(server.url("/session/ok/page")) as resp:
                assert resp.status == 200
                await resp.read()
        assert watch.in_flight == 0
        if fast_path:
            assert server.app[FAST_PATH].proxied == 3  # the fast path answered them, not aiohttp's

        # A request the upstream holds: in flight while it runs, activity when it ends.
        held = asyncio.ensure_future(client.get(server.url("/session/ok/held")))
        await asyncio.wait_for(arrived.wait(), 10)
        assert watch.in_flight == 1
        assert watch.busy() == ["requests"]
        before_end = watch.last_request
        before_session = table.last_activity["ok"]
        release.set()
        async with await held as resp:
            assert resp.status == 200
            assert await resp.text() == "released"
        await wait_until(lambda: watch.in_flight == 0, "no exchange in flight")
        assert watch.last_request > before_end
        assert table.last_activity["ok"] > before_session

        # An upstream that refuses the connection: one 502, one error of kind "connect", counted once.
        async with client.get(server.url("/session/dead/page")) as resp:
            assert resp.status == 502
            assert (await resp.json())["success"] is False
        assert watch.in_flight == 0

        # A WebSocket: in flight for as long as it is open, counted as a 101 when it ends.
        async with client.ws_connect(server.url("/session/ws/"), protocols=PROTOCOLS) as ws:
            await ws.send_str("ping")
            assert (await ws.receive(timeout=10)).data == "ping"
            assert watch.in_flight == 1
        await wait_until(lambda: watch.in_flight == 0, "no exchange in flight")

        samples = await scrape(client, server)

    requests = "edge_requests_total"
    assert value(samples, requests, route="proxy", code="200") == 4
    assert value(samples, requests, route="proxy", code="502") == 1
    assert value(samples, requests, route="proxy", code="101") == 1
    assert sum(v for (name, labels), v in samples.items() if name == requests and ("route", "proxy") in labels) == 6
    assert value(samples, "edge_upstream_response_seconds_count") == 4  # the heads that arrived over HTTP
    assert value(samples, "edge_upstream_errors_total", kind="connect") == 1
    for kind in ("timeout", "reset", "handshake"):
        assert value(samples, "edge_upstream_errors_total", kind=kind) == 0, kind
    # One log record per exchange, with its upstream URL and the error where there was one.
    logged = records.records
    assert [(r["session"], r["status"]) for r in logged] == [
        ("ok", 200), ("ok", 200), ("ok", 200), ("ok", 200), ("dead", 502), ("ws", 101)
    ]
    assert [r["upstream"] for r in logged[:4]] == [f"http://{URL(upstream.origin).authority}/page"] * 3 + [
        f"http://{URL(upstream.origin).authority}/held"
    ]
    assert "error" in logged[4] and "error" not in logged[0]
