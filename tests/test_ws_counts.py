"""Each WebSocket is counted once in /metrics, with the status its proxy-log line has."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest

from edge.proxylog import JsonLines, ProxyLog
from tests.support.polling import wait_until
from tests.support.routes import add_route
from tests.support.websocket import PROTOCOLS, WsUpstream
from tests.test_metrics import WAIT, scrape, value

pytestmark = pytest.mark.both_loops  # code on transports: asyncio's loop and uvloop's

TOKEN = "metrics-token"


async def test_websocket_outcomes_in_metrics_match_the_log(edge, serve):
    recorder = WsUpstream()
    upstream = await serve(recorder.app())
    lines = io.StringIO()
    server = await edge(api_token=TOKEN, proxy_log=ProxyLog([JsonLines(lines)]))
    add_route(server, "ws", upstream.origin)
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        async with client.ws_connect(server.url("/session/ws/"), protocols=PROTOCOLS) as ws:  # closed cleanly
            await ws.send_str("x")
            assert (await ws.receive(timeout=10)).data == "x"
        ws = await client.ws_connect(server.url("/session/ws/"), protocols=PROTOCOLS)  # the browser vanishes
        await ws.send_str("y")
        assert (await ws.receive(timeout=10)).data == "y"
        ws._response.connection.transport.abort()
        try:
            async with client.ws_connect(server.url("/session/ws/status/403"), protocols=PROTOCOLS):
                pass
        except aiohttp.WSServerHandshakeError as refused:
            assert refused.status == 403
        await wait_until(lambda: len(lines.getvalue().splitlines()) == 3, "the relay to log the vanished browser")
        samples = await scrape(client, server)
    logged = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert sorted(record["status"] for record in logged) == [101, 101, 403]
    assert "browser went away" in next(r["error"] for r in logged if r.get("error"))
    counted = {
        dict(labels)["code"]: number
        for (name, labels), number in samples.items()
        if name == "edge_requests_total" and dict(labels)["route"] == "proxy" and number
    }
    assert counted == {"101": 2, "403": 1}  # not a 499 for the vanished browser
    assert value(samples, "edge_websockets_open") == 0
