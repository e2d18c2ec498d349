"""A client that goes away takes its upstream request with it.

The upstreams here never finish on their own: they only end when the edge
drops their connection, which they observe as the cancellation of their
handler (they run with ``handler_cancellation`` too).
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.support.rawhttp import open_raw, read_response, request
from tests.support.routes import add_route
from tests.support.upstreams import app_with

pytestmark = pytest.mark.both_loops  # code on transports: asyncio's loop and uvloop's

FOREVER = 3600


class Observed:
    """Events an upstream handler reports: it started, it was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def wait(self, event: asyncio.Event) -> None:
        async with asyncio.timeout(10):
            await event.wait()


async def upstream_with(serve, handler) -> str:
    """The origin of an upstream whose every request goes to ``handler`` (cancelled when the edge leaves)."""
    return (await serve(app_with({"/{tail:.*}": handler}), handler_cancellation=True)).origin


async def test_disconnect_while_the_upstream_is_slow_to_answer_cancels_it(edge, serve):
    seen = Observed()

    async def slow(request: web.Request) -> web.Response:
        seen.started.set()
        try:
            await asyncio.sleep(FOREVER)
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
        return web.Response()

    server = await edge(first_byte_timeout=FOREVER)
    add_route(server, "s1", await upstream_with(serve, slow))
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/slow"))
    await seen.wait(seen.started)
    writer.close()
    await seen.wait(seen.cancelled)


async def test_disconnect_while_a_response_streams_cancels_it(edge, serve):
    seen = Observed()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        seen.started.set()
        try:
            await asyncio.sleep(FOREVER)  # an idle event stream: only a dropped connection ends it
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise
        return response

    server = await edge()
    add_route(server, "s1", await upstream_with(serve, stream))
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/events"))
    response_head = await reader.readuntil(b"\r\n\r\n")
    assert response_head.startswith(b"HTTP/1.1 200")
    assert b"data: first" in await reader.readuntil(b"data: first\n\n")
    await seen.wait(seen.started)
    writer.close()
    await seen.wait(seen.cancelled)


async def test_disconnect_during_an_upload_cancels_it(edge, serve):
    seen = Observed()

    async def upload(request: web.Request) -> web.Response:
        try:
            await request.content.readexactly(1000)
            seen.started.set()
            await request.read()
        except BaseException:
            seen.cancelled.set()
            raise
        return web.Response()

    server = await edge()
    add_route(server, "s1", await upstream_with(serve, upload))
    reader, writer = await open_raw(server.port)
    writer.write(request("POST", "/session/s1/upload", headers={"Content-Length": "1000000"}, body=b"x" * 1000))
    await seen.wait(seen.started)
    writer.close()
    await seen.wait(seen.cancelled)


async def test_the_edge_keeps_serving_after_clients_vanish(edge, serve):
    seen = Observed()

    async def slow_then_fine(request: web.Request) -> web.Response:
        if request.path == "/slow":
            seen.started.set()
            await asyncio.sleep(FOREVER)
        return web.Response(text="fine")

    server = await edge(first_byte_timeout=FOREVER)
    add_route(server, "s1", await upstream_with(serve, slow_then_fine))
    for _ in range(5):
        seen.started.clear()
        reader, writer = await open_raw(server.port)
        writer.write(request("GET", "/session/s1/slow"))
        await seen.wait(seen.started)
        writer.close()
    reader, writer = await open_raw(server.port)
    writer.write(request("GET", "/session/s1/ok", headers={"Connection": "close"}))
    response = await read_response(reader)
    writer.close()
    assert response is not None and response.body == b"fine"
