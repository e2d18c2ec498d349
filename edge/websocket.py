"""The WebSocket relay that carries Vite's HMR socket through the edge.

The upstream is connected first, so the browser is accepted with the
subprotocol the upstream chose (``vite-hmr``, ``vite-ping``) and a dead or
refusing upstream is answered with an HTTP status instead of an
accepted-then-closed socket. Then two pumps copy frames (text, binary, ping,
pong) as they are; text is never decoded. Close codes pass both ways.

Closing is done in one place, :meth:`Relay.run`, never by the pumps:
the upstream side first, the browser last, because closing the browser's
connection cancels the handler (``handler_cancellation``).

The hot path is a data frame crossing the relay. aiohttp's reader parses it
into its queue and wakes a pump task, which reads and sends it: a task
switch and two coroutine layers per message. While the relay runs, a data,
ping or pong message is instead written to the other side as it is parsed
(:class:`_Queue`, from the socket's own protocol callback), when nothing is
queued before it and the other side's buffer is not full; anything else
(close frames, errors, a full buffer) goes through the queue and the pumps
as before, in order. This uses aiohttp internals (its queue, reader and
frame writer: aiohttp is pinned to 3.14.x); the WebSocket tests cover it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
from yarl import URL

from edge import keys
from edge.errors import error_response
from edge.exchange import Exchange
from edge.flow import ProxyFlow, UpstreamError
from edge.headers import Peer, upstream_request_headers
from edge.routing import Match, Route, SessionTable
from edge.upstream import upstream_client

# The largest message a browser may send: what Vite's own server (the `ws`
# library's maxPayload) accepts. Upstream messages are not capped.
MAX_BROWSER_MESSAGE = 100 * 1024**2
# How long a close handshake waits for the other end's close frame.
CLOSE_TIMEOUT = 5.0
UPSTREAM_LOST = WSCloseCode.INTERNAL_ERROR  # 1011: the upstream vanished without a close frame
_UNSENDABLE = {1004, 1005, 1006, 1015}

BROWSER, UPSTREAM, EDGE = "browser", "upstream", "edge"
Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
QUEUE_LIMIT = 2**16  # aiohttp's own for a socket's queue of received messages
# Frames are written straight through only while the other side's buffer is below this.
WRITE_THROUGH_LIMIT = 2**16
_PASSED = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG)


class _Queue(WebSocketDataQueue):
    """aiohttp's queue of one socket's received messages, which can hand each to the relay first.

    ``forward`` returns whether it took the message; a message it did not take is queued as usual.
    """

    forward: Callable[[tuple], bool] | None = None

    def feed_data(self, data: tuple, size: int) -> None:  # type: ignore[override]
        forward = self.forward
        if forward is None or not forward(data):
            super().feed_data(data, size)


class _BrowserSocket(web.WebSocketResponse):
    """The browser's socket, reading into a :class:`_Queue` (aiohttp's ``_post_start`` with that queue)."""

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer) -> None:  # type: ignore[no-untyped-def]
        self._ws_protocol = protocol
        self._writer = writer
        self._reset_heartbeat()
        assert self._loop is not None
        self._reader = _Queue(request._protocol, QUEUE_LIMIT, loop=self._loop)
        self._parser = WebSocketReader(self._reader, self._max_msg_size, compress=False, decode_text=self._decode_text)
        request.protocol.set_parser(self._parser, data_received_cb=None if self._heartbeat is None else self._on_data_received)
        request.protocol.keep_alive(False)


class _UpstreamSocket(aiohttp.ClientWebSocketResponse):
    """The upstream's socket, reading into a :class:`_Queue`.

    aiohttp's ``ws_connect`` makes the queue, then a parser feeding it; this
    class puts its own queue in place of the first and builds the parser on
    it (with the relay's options: no size limit, no decoding, no compression).
    """

    def __init__(self, reader: WebSocketDataQueue, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(_Queue(reader._protocol, QUEUE_LIMIT, loop=asyncio.get_running_loop()), *args, **kwargs)

    @property
    def _parser(self) -> WebSocketReader | None:
        return self._own_parser

    @_parser.setter
    def _parser(self, parser: WebSocketReader | None) -> None:
        self._own_parser = None if parser is None else WebSocketReader(self._reader, 0, compress=False, decode_text=False)


def is_upgrade(request: web.BaseRequest) -> bool:
    connection = request.headers.get("Connection", "").lower()
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "websocket"


def sendable_code(code: int | None) -> int:
    """A close code that may go on the wire (1005/1006 only ever describe a closure)."""
    if code is None or code in _UNSENDABLE or not 1000 <= code <= 4999:
        return WSCloseCode.OK
    return code


@dataclass(frozen=True, slots=True)
class End:
    """Why a relay ends: who ended it, and the close frame it sent (``code`` None: it vanished)."""

    side: str  # BROWSER, UPSTREAM or EDGE (session removed, edge stopping)
    code: int | None = None
    reason: str = ""
    await_reply: bool = True  # wait for the browser's close frame before closing its connection


class Relay:
    """One browser socket joined to one upstream socket."""

    def __init__(
        self,
        browser: web.WebSocketResponse,
        upstream: aiohttp.ClientWebSocketResponse,
        flow: ProxyFlow,
        table: SessionTable,
        session_id: str,
    ) -> None:
        self.browser = browser
        self.upstream = upstream
        self.flow = flow
        self._table = table
        self._session_id = session_id
        self._stopped: asyncio.Future[End] = asyncio.get_running_loop().create_future()

    def stop(self, code: int = WSCloseCode.GOING_AWAY, reason: str = "", *, await_reply: bool = True) -> None:
        """Ask the relay to close both sides with ``code`` (it closes from its own task)."""
        if not self._stopped.done():
            self._stopped.set_result(End(EDGE, code, reason, await_reply))

    async def run(self) -> None:
        """Relay until either side closes or :meth:`stop` is called, then close both sides."""
        pumps = (
            asyncio.create_task(self._pump(self.browser, self.upstream, BROWSER)),
            asyncio.create_task(self._pump(self.upstream, self.browser, UPSTREAM)),
        )
        self._write_through(True)
        try:
            try:
                await asyncio.wait((*pumps, self._stopped), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The browser's connection dropped (or the server stopped waiting):
                # the upstream still gets a close frame.
                self._write_through(False)
                self._record(End(BROWSER))
                await self.upstream.close(code=WSCloseCode.GOING_AWAY)
                raise
            self._write_through(False)  # from here on, what still arrives is the closing's business
            # A stop wins: the browser must see the edge's code even if the upstream is already dying.
            end = next(f.result() for f in (self._stopped, *pumps) if f.done())
            self._record(end)
            # A close to the upstream also ends the pump reading it (aiohttp wakes its receive()).
            await self._close_upstream(end)
            await _cancel(pumps)
            # Last: closing the browser's connection cancels this handler.
            await self._close_browser(end)
        finally:
            self._write_through(False)
            await _cancel(pumps)

    def _write_through(self, on: bool) -> None:
        """Let each side's parsed messages go straight to the other side (see the module's notes), or stop."""
        for source, sink, inbound in ((self.browser, self.upstream, True), (self.upstream, self.browser, False)):
            queue = source._reader
            if isinstance(queue, _Queue):
                queue.forward = self._forwarder(queue, sink, inbound) if on else None

    def _forwarder(self, queue: _Queue, sink: Socket, inbound: bool) -> Callable[[tuple], bool]:
        """Write one parsed message to ``sink`` now, if it may pass ahead of the pump (the hot path)."""
        writer = sink._writer
        assert writer is not None
        transport, write, queued = writer.transport, writer._write_websocket_frame, queue._buffer
        flow, touch, session_id = self.flow, self._table.touch, self._session_id
        text, binary, passed = WSMsgType.TEXT, WSMsgType.BINARY, _PASSED

        def forward(msg: tuple) -> bool:
            kind = msg[0]
            if kind not in passed or queued or transport.is_closing() or transport.get_write_buffer_size() > WRITE_THROUGH_LIMIT:
                return False  # the pump takes it, after what is queued before it
            data = msg[1]
            write(data, kind, 0)
            if kind is text or kind is binary:
                if inbound:
                    flow.messages_in += 1
                    flow.bytes_in += len(data)
                else:
                    flow.messages_out += 1
                    flow.bytes_out += len(data)
            touch(session_id)
            return True

        return forward

    async def _pump(self, source: Socket, sink: Socket, side: str) -> End:
        """Copy frames from ``source`` to ``sink`` until ``source`` ends (this is the hot path)."""
        flow, touch, session_id = self.flow, self._table.touch, self._session_id
        inbound = side == BROWSER
        receive, send = source.receive, sink.send_frame
        try:
            while True:
                msg = await receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    await send(msg.data, kind)
                    if inbound:
                        flow.messages_in += 1
                        flow.bytes_in += len(msg.data)
                    else:
                        flow.messages_out += 1
                        flow.bytes_out += len(msg.data)
                elif kind is WSMsgType.PING or kind is WSMsgType.PONG:
                    await send(msg.data, kind)
                elif kind is WSMsgType.CLOSE:
                    return End(side, msg.data, msg.extra or "")
                else:  # CLOSED or ERROR: the peer went away without a close frame
                    return End(side)
                touch(session_id)
        except (ConnectionError, aiohttp.ClientError):  # the sink went away mid-send
            return End(UPSTREAM if inbound else BROWSER)

    def _record(self, end: End) -> None:
        if end.code is not None:
            self.flow.close_code = sendable_code(end.code)
        elif end.side == UPSTREAM:
            self.flow.close_code = UPSTREAM_LOST
            self.flow.fail(UpstreamError.RESET, "upstream went away without a close frame")
        else:
            self.flow.close_code = WSCloseCode.GOING_AWAY
            self.flow.fail(None, "browser went away without a close frame")

    async def _close_upstream(self, end: End) -> None:
        """Pass the close on to the upstream (or answer its close) and wait for its close frame."""
        if end.side == UPSTREAM:
            code, reason = sendable_code(end.code), ""  # the echo; a vanished upstream is closed already
        elif end.code is None:
            code, reason = WSCloseCode.GOING_AWAY, ""
        else:
            code, reason = sendable_code(end.code), end.reason
        await self.upstream.close(code=code, message=reason.encode())

    async def _close_browser(self, end: End) -> None:
        """Pass the close on to the browser (or answer its close); a vanished browser is closed already."""
        if end.side == BROWSER:
            code, reason = sendable_code(end.code), ""
        elif end.code is None:
            code, reason = UPSTREAM_LOST, "upstream connection lost"
        else:
            code, reason = sendable_code(end.code), end.reason
        if end.await_reply:
            await self.browser.close(code=code, message=reason.encode())
            return
        # aiohttp's close() writes the close frame before it first waits, so a zero
        # timeout sends the frame, gives up waiting for the answer and closes the connection.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0):
                await self.browser.close(code=code, message=reason.encode())


async def _cancel(tasks: tuple[asyncio.Task, ...]) -> None:
    """Cancel the tasks still running and wait for them (without yielding when none is)."""
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)


class SocketRegistry:
    """Open relays per session, so removing a session (or stopping the edge) closes them."""

    def __init__(self) -> None:
        self._open: dict[str, set[Relay]] = defaultdict(set)
        self._closing: tuple[int, str] | None = None

    def add(self, session_id: str, relay: Relay) -> None:
        self._open[session_id].add(relay)
        if self._closing is not None:  # a handshake that finished while the edge stops
            relay.stop(*self._closing, await_reply=False)

    def discard(self, session_id: str, relay: Relay) -> None:
        relays = self._open.get(session_id)
        if relays is not None:
            relays.discard(relay)
            if not relays:
                del self._open[session_id]

    def count(self) -> int:
        return sum(len(relays) for relays in self._open.values())

    async def close_session(self, session_id: str, code: int = WSCloseCode.GOING_AWAY, reason: str = "preview stopped") -> None:
        """Ask a session's relays to close (browsers get ``code``); each closes from its own task."""
        for relay in self._open.get(session_id, ()):
            relay.stop(code, reason)

    async def close_all(self, code: int = WSCloseCode.GOING_AWAY, reason: str = "edge shutting down") -> None:
        """Close every relay, and any that opens from now on, as the edge stops.

        At shutdown aiohttp's server no longer reads its connections (``pre_shutdown``),
        so the browsers' answers are not awaited; the server waits for the handlers.
        """
        self._closing = (code, reason)
        for relays in self._open.values():
            for relay in relays:
                relay.stop(code, reason, await_reply=False)


SOCKETS = web.AppKey("sockets", SocketRegistry)


async def relay_websocket(request: web.Request, found: Match, route: Route, peer: Peer, ex: Exchange) -> web.StreamResponse:
    """Connect upstream, accept the browser with the upstream's subprotocol, relay until either side closes.

    The exchange (:mod:`edge.exchange`) runs as long as the relay: the edge is busy while a socket is open.
    """
    assert route.target is not None
    flow = ex.flow
    flow.websocket = True
    protocols = tuple(
        p.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", ()) for p in value.split(",") if p.strip()
    )
    if not web.WebSocketResponse(protocols=protocols).can_prepare(request):
        ex.fail(None, "invalid WebSocket handshake", 400)
        return error_response(request, 400, "This is not a valid WebSocket handshake.")

    upstream = await _connect_upstream(request, found, route, peer, ex, protocols)
    if isinstance(upstream, web.Response):
        return upstream

    browser = _BrowserSocket(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoping=False,
        autoclose=False,
        max_msg_size=MAX_BROWSER_MESSAGE,
        compress=False,
        decode_text=False,
        timeout=CLOSE_TIMEOUT,
    )
    browser.headers["X-Edge-Session"] = found.session_id
    flow.change("response", "added", "X-Edge-Session", None, found.session_id)
    relay = Relay(browser, upstream, flow, request.app[keys.SESSIONS], found.session_id)
    try:
        await browser.prepare(request)
    except BaseException:  # the browser left during its handshake
        await upstream.close(code=WSCloseCode.GOING_AWAY)
        raise
    flow.status = 101
    flow.response_headers = browser.headers
    sockets = request.app[SOCKETS]
    sockets.add(found.session_id, relay)
    try:
        await relay.run()
    finally:
        sockets.discard(found.session_id, relay)
    return browser


async def _connect_upstream(
    request: web.Request, found: Match, route: Route, peer: Peer, ex: Exchange, protocols: tuple[str, ...]
) -> aiohttp.ClientWebSocketResponse | web.Response:
    """The upstream socket (offered all the browser's subprotocols), or the browser's error answer."""
    assert route.target is not None
    flow = ex.flow
    headers = upstream_request_headers(request.headers, route.target, peer, found.prefix, flow, websocket=True)
    url = URL(flow.upstream_url, encoded=True)  # set when the exchange began
    flow.upstream_headers = headers
    try:
        async with asyncio.timeout(request.app[keys.SETTINGS].first_byte_timeout):
            return await request.app[CLIENT].ws_connect(
                url,
                method=request.method,
                headers=headers,
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
                autoclose=False,
                autoping=False,
                max_msg_size=0,
                compress=0,
                decode_text=False,
            )
    except aiohttp.WSServerHandshakeError as exc:
        status = exc.status if 400 <= exc.status < 600 else 502
        ex.fail(UpstreamError.HANDSHAKE, f"upstream refused the WebSocket: {exc.status}", status)
        return error_response(request, status, f"The preview refused the WebSocket ({exc.status}).")
    except TimeoutError:
        ex.fail(UpstreamError.TIMEOUT, "upstream WebSocket handshake timed out", 504)
        return error_response(request, 504, "The preview did not answer the WebSocket handshake in time.")
    except (aiohttp.ClientError, OSError) as exc:
        kind = UpstreamError.CONNECT if isinstance(exc, aiohttp.ClientConnectorError) else UpstreamError.RESET
        ex.fail(kind, f"upstream unreachable: {type(exc).__name__}", 502)
        return error_response(request, 502, "The preview server is not reachable.", "It may have stopped; restart the preview.")


CLIENT = web.AppKey("websocket_client", aiohttp.ClientSession)


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The client for upstream sockets: the proxy's own client options, with :class:`_UpstreamSocket`."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True, enable_cleanup_closed=True)
    async with upstream_client(app[keys.SETTINGS].connect_timeout, connector, ws_response_class=_UpstreamSocket) as client:
        app[CLIENT] = client
        yield


def setup(app: web.Application) -> None:
    """The upstream sockets' client (``relay_websocket`` connects with it)."""
    app.cleanup_ctx.append(_client_ctx)
