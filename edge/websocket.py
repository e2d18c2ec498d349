"""The WebSocket relay that carries Vite's HMR socket through the edge.

The upstream is connected first, so the browser is accepted with the
subprotocol the upstream chose (``vite-hmr``, ``vite-ping``) and a dead
upstream is answered with an HTTP status instead of an accepted-then-closed
socket. Frames, pings and close codes pass both ways; no message size cap.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from edge import keys
from edge.errors import error_response
from edge.flow import ProxyFlow
from edge.headers import Peer, upstream_request_headers
from edge.routing import Match, Route

UPSTREAM_LOST = WSCloseCode.INTERNAL_ERROR  # 1011: the upstream vanished without a close frame
_UNSENDABLE = {1004, 1005, 1006, 1015}


def is_upgrade(request: web.BaseRequest) -> bool:
    connection = request.headers.get("Connection", "").lower()
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "websocket"


def sendable_code(code: int | None) -> int:
    """A close code that may go on the wire (1005/1006 only ever describe a closure)."""
    if code is None or code in _UNSENDABLE or not 1000 <= code <= 4999:
        return WSCloseCode.OK
    return code


class SocketRegistry:
    """Open relays per session, so removing a session (or stopping) closes them."""

    def __init__(self) -> None:
        self._open: dict[str, set[web.WebSocketResponse]] = defaultdict(set)

    def add(self, session_id: str, ws: web.WebSocketResponse) -> None:
        self._open[session_id].add(ws)

    def discard(self, session_id: str, ws: web.WebSocketResponse) -> None:
        sockets = self._open.get(session_id)
        if sockets is not None:
            sockets.discard(ws)
            if not sockets:
                del self._open[session_id]

    def count(self) -> int:
        return sum(len(s) for s in self._open.values())

    async def close_session(self, session_id: str, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"preview stopped") -> None:
        for ws in list(self._open.get(session_id, ())):
            await ws.close(code=code, message=message)

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY, message: bytes = b"edge shutting down") -> None:
        for session_id in list(self._open):
            await self.close_session(session_id, code, message)


SOCKETS = web.AppKey("sockets", SocketRegistry)


async def relay_websocket(request: web.Request, found: Match, route: Route, peer: Peer, flow: ProxyFlow) -> web.StreamResponse:
    """Connect upstream, accept the browser with the upstream's subprotocol, relay until either side closes."""
    assert route.target is not None
    settings = request.app[keys.SETTINGS]
    client = request.app[keys.CLIENT]
    flow.websocket = True
    headers = upstream_request_headers(request.headers, route.target, peer, found.prefix, flow, websocket=True)
    protocols = tuple(
        p.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in value.split(",") if p.strip()
    )
    url = URL(str(route.target).rstrip("/") + found.upstream_path, encoded=True)
    flow.upstream_url = str(url)
    flow.upstream_headers = headers
    try:
        async with asyncio.timeout(settings.first_byte_timeout):
            upstream = await client.ws_connect(
                url,
                method=request.method,
                headers=headers,
                protocols=protocols,
                autoclose=False,
                autoping=False,
                max_msg_size=0,
                compress=0,
            )
    except TimeoutError:
        flow.status, flow.error = 504, "upstream WebSocket handshake timed out"
        return error_response(request, 504, "The preview did not answer the WebSocket handshake in time.")
    except aiohttp.WSServerHandshakeError as exc:
        status = exc.status if 400 <= exc.status < 600 else 502
        flow.status, flow.error = status, f"upstream refused the WebSocket: {exc.status}"
        return error_response(request, status, f"The preview refused the WebSocket ({exc.status}).")
    except (aiohttp.ClientConnectionError, OSError) as exc:
        flow.status, flow.error = 502, f"upstream unreachable: {type(exc).__name__}"
        return error_response(request, 502, "The preview server is not reachable.", "It may have stopped; restart the preview.")

    sockets = request.app[SOCKETS]
    async with upstream:
        browser = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False,
            autoclose=False,
            max_msg_size=0,
            compress=False,
            headers={"X-Edge-Session": found.session_id},
        )
        await browser.prepare(request)
        flow.status = 101
        flow.response_headers = browser.headers
        sockets.add(found.session_id, browser)
        try:
            await _pump_both(request, browser, upstream, flow, found.session_id)
        finally:
            sockets.discard(found.session_id, browser)
            if not upstream.closed:
                await upstream.close()
    return browser


async def _pump_both(
    request: web.Request,
    browser: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    flow: ProxyFlow,
    session_id: str,
) -> None:
    table = request.app[keys.SESSIONS]
    to_upstream = asyncio.create_task(_pump(browser, upstream, flow, "in", table.touch, session_id))
    to_browser = asyncio.create_task(_pump(upstream, browser, flow, "out", table.touch, session_id))
    try:
        done, _ = await asyncio.wait({to_upstream, to_browser}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_upstream, to_browser):
            task.cancel()
        await asyncio.gather(to_upstream, to_browser, return_exceptions=True)
    finished = done.pop()
    try:
        code = finished.result()
    except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
        flow.error = f"relay failed: {type(exc).__name__}"
        code = UPSTREAM_LOST
    flow.close_code = code
    # A clean close was passed on inside _pump; this handles peers that just vanished.
    if not browser.closed:
        await browser.close(code=code, message=b"upstream connection lost" if code == UPSTREAM_LOST else b"")
    if not upstream.closed:
        await upstream.close(code=code)


async def _pump(source, sink, flow: ProxyFlow, direction: str, touch, session_id: str) -> int:
    """Copy frames from ``source`` to ``sink``; return the close code to pass on."""
    while True:
        msg = await source.receive()
        if msg.type is WSMsgType.TEXT:
            await sink.send_str(msg.data)
            _count(flow, direction, len(msg.data.encode()))
        elif msg.type is WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
            _count(flow, direction, len(msg.data))
        elif msg.type is WSMsgType.PING:
            await sink.ping(msg.data)
        elif msg.type is WSMsgType.PONG:
            await sink.pong(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            code = sendable_code(msg.data)
            if not sink.closed:
                await sink.close(code=code, message=(msg.extra or "").encode()[:123])
            if not source.closed:
                await source.close(code=code)
            return code
        else:  # CLOSING, CLOSED, ERROR: the peer went away without a close frame
            return UPSTREAM_LOST if direction == "out" else WSCloseCode.GOING_AWAY
        touch(session_id)


def _count(flow: ProxyFlow, direction: str, size: int) -> None:
    if direction == "in":
        flow.messages_in += 1
        flow.bytes_in += size
    else:
        flow.messages_out += 1
        flow.bytes_out += size
