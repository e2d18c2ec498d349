"""The edge's limits as an HTTP server: what aiohttp does not bound by itself.

aiohttp's server waits for a request head as long as the keep-alive timer
allows (an hour by default) and accepts connections without limit, so a few
hundred idle or trickling sockets ("slowloris") would hold the edge's file
descriptors and memory. :class:`EdgeProtocol` is aiohttp's own HTTP/1.1
protocol with these additions, and :class:`EdgeSite` listens with it:

* a request-head deadline (``EDGE_HEADER_TIMEOUT``): a connection that sends
  nothing, or whose request head is not complete in time, is closed. The
  clock starts when the connection opens and, on a kept-alive connection,
  when the first byte of the next request arrives. Bodies, streamed
  responses and WebSockets are not timed by it: a long upload or an HMR socket is
  legitimate.
* a cap on open client connections (``EDGE_MAX_CONNECTIONS``) and on those
  of one client (``EDGE_MAX_CONNECTIONS_PER_CLIENT``), so idle or trickling
  clients cannot exhaust file descriptors and memory, nor lock others out:
  at the cap the connection that least looks like a working client makes
  room, and health checks have a reserve (:class:`edge.connguard.ConnectionGuard`).
* a deadline between request-body bytes (``EDGE_BODY_TIMEOUT``, also the guard's).
* the head limits of :data:`edge.headlimits.HEAD_LIMITS`, and parser errors answered in the
  edge's error shape with one rate-limited log line.

Idle kept-alive connections are closed by aiohttp's own ``keepalive_timeout``
(``EDGE_KEEPALIVE_TIMEOUT``), which stays above a load balancer's idle timeout.

aiohttp has no hook for "a request head was parsed", so :class:`EdgeProtocol`
reads attributes of its base class (``_waiter``, ``_request_count``,
``_current_request``, ``_payload_parser``, ``_reading_paused``, and on an
upgraded WebSocket's reads ``_force_close``, ``_close``, ``_data_received_cb``), as aiohttp's
own keep-alive check does, and sets the version of its placeholder request
for unparsable heads (``_version``); aiohttp is pinned to 3.14.x and
``tests/test_server_limits.py`` fails if their meaning changes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from time import monotonic
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from edge.connguard import Admission, ConnectionGuard, Slot, is_health_check, peer_address
from edge.errors import error_page, raw_error
from edge.headers import client_address
from edge.headlimits import HEAD_LIMITS

if TYPE_CHECKING:
    from edge.fastpath import FastPath

log = logging.getLogger(__name__)


_ACCEPT = re.compile(rb"\r\naccept[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_FORWARDED_FOR = re.compile(rb"\r\nx-forwarded-for[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class EdgeProtocol(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with the connection cap, a request-head deadline and size limit,
    and parser errors answered in the edge's shape."""

    __slots__ = ("_guard", "_admitted", "_head_timer", "_head", "_in_head", "_accept_seen", "_reserve", "_socket_slot")

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        limits = {
            "max_line_size": HEAD_LIMITS.max_line_size,
            "max_field_size": HEAD_LIMITS.max_field_size,
            "max_headers": HEAD_LIMITS.max_headers,
        }
        super().__init__(manager, **{**limits, **kwargs})
        self._guard = guard
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head = bytearray()  # the bytes of the head being read (its size is limited; its Accept picks an error's form)
        self._in_head = True  # a request head is being read (from the connection's start)
        self._accept_seen = ""
        self._reserve = False  # admitted past the cap: health checks only
        self._socket_slot: Slot | None = None  # the guard's slot once a WebSocket took the connection over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admission = self._guard.admit(self, peer_address(transport))
        if admission is Admission.REFUSED:
            transport.close()
            return
        self._admitted = True
        self._reserve = admission is Admission.RESERVE
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release(self)
        self._stop_head_clock()
        super().connection_lost(exc)

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None) -> None:
        """A WebSocket takes the connection over (after its 101): from now on :meth:`data_received` only
        records when the client last sent something (idle sockets stay the first to be evicted) and feeds
        the frames on; there are no more heads and no body deadline on it."""
        super().set_parser(parser, data_received_cb)
        self._in_head = False
        self._stop_head_clock()
        self._socket_slot = self._guard.slot(self)

    def data_received(self, data: bytes) -> None:
        slot = self._socket_slot
        if slot is not None:  # an upgraded WebSocket, read for read (aiohttp's branch for a set parser)
            slot.last_read = monotonic()
            if data and not (self._force_close or self._close):
                if self._data_received_cb is not None:
                    self._data_received_cb()
                if self._payload_parser.feed_data(data)[0]:  # type: ignore[union-attr]
                    self.close()
            return
        self._guard.read(self)
        if not self._in_head and self.waiting_for_head():
            self._in_head = True  # the first byte of the next request on a kept-alive connection
            if self._head_timer is None:
                self._start_head_clock()
        limit = HEAD_LIMITS.max_head
        if self._in_head and len(self._head) <= limit:
            self._head += data[: limit + 1 - len(self._head)]
            end = self._head.find(b"\r\n\r\n", 0, limit)
            if end < 0 and len(self._head) > limit:
                self._refuse_head(431, f"The request head is larger than {limit} bytes.")
                return
            if self._reserve and is_health_check(self._head) is False:
                self._refuse_head(503, "The edge is at its connection limit; try again shortly.")
                return
            if end >= 0 and self._guard.per_client and not self._client_within_limit():
                self._refuse_head(429, "Too many connections from this client.")
                return
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._in_head = False
            self._accept_seen = self._accept()  # for handle_error, which runs later
            self._head.clear()
            self._stop_head_clock()

    def _refuse_head(self, status: int, error: str) -> None:
        """Answer a head that is too large (in the edge's shape, as HTTP/1.1) and close the connection."""
        self._guard.bad_requests.warning("bad request from %s: %d %s", self.peername, status, error)
        _, answer = raw_error(self._accept(), status, error, close=True)
        self._stop_head_clock()
        if self.transport is not None:
            self.transport.write(answer)
        self.force_close()

    def _client_within_limit(self) -> bool:
        """Attribute the connection to the client a trusted proxy names (``EDGE_MAX_CONNECTIONS_PER_CLIENT``)."""
        remote = self.peername
        address = remote[0] if isinstance(remote, (list, tuple)) and remote else ""
        forwarded = [m.group(1).decode("latin-1") for m in _FORWARDED_FOR.finditer(self._head)]
        return self._guard.attribute(self, client_address(address, forwarded, self._guard.trusted))

    def receiving(self) -> bool:
        """Waiting on the client: for a head, a request body, or a WebSocket's messages."""
        return self._in_head or self._payload_parser is not None or self._body_pending()

    def body_stalled(self) -> bool:
        """A request body is being read and reading is not paused by the edge itself (backpressure)."""
        return self._body_pending() and not self._reading_paused

    def _body_pending(self) -> bool:
        request = self._current_request
        return request is not None and request.body_exists and not request.content.is_eof()

    def _accept(self) -> str:
        found = _ACCEPT.search(self._head)
        return found.group(1).decode("latin-1").strip() if found else ""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """Parser errors (400): one rate-limited WARNING line, no traceback, and the edge's error shape.

        aiohttp answers them as HTTP/1.0 text, since its placeholder request for
        a head it could not parse has version 1.0 and no headers; the Accept
        header is read from the raw head instead. Other errors (a handler's
        exception: 500) keep aiohttp's handling and its traceback.
        """
        if status != 400 or request.method != "UNKNOWN":  # aiohttp's placeholder for a head it could not parse
            return super().handle_error(request, status, exc, message)
        error = f"Bad request: {message or 'invalid HTTP'}"[:300]
        self._guard.bad_requests.warning("bad request from %s: %s", request.remote, error[:200])
        request._version = HttpVersion11  # the placeholder's is 1.0; this answer is HTTP/1.1 like every other
        page = error_page(self._accept_seen, 400, error)
        response = web.Response(status=400, text=page.text, content_type=page.content_type, headers=page.headers)
        response.force_close()
        return response

    def waiting_for_head(self) -> bool:
        """Idle: open, with no request being handled or queued (a new or kept-alive connection)."""
        # aiohttp's own idleness test (RequestHandler._process_keepalive): its
        # request loop awaits this future until the next head has been parsed.
        return self.transport is not None and self._waiter is not None and not self._waiter.done()

    def _start_head_clock(self) -> None:
        if self._guard.header_timeout > 0:
            self._head_timer = self._loop.call_later(self._guard.header_timeout, self._head_deadline)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._in_head and self.transport is not None:
            log.debug("closing a connection from %s: no complete request head in %ss", self.peername, self._guard.header_timeout)
            self.force_close()


class _Primed(asyncio.Protocol):
    """Starts ``protocol`` on an adopted connection with the bytes read before, ahead of any new ones."""

    def __init__(self, protocol: asyncio.Protocol, data: bytes) -> None:
        self._protocol = protocol
        self._data = data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self._protocol)
        self._protocol.connection_made(transport)
        if self._data and not transport.is_closing():
            self._protocol.data_received(self._data)  # type: ignore[attr-defined]


def _log_failed_adoption(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("could not take over a connection from an edge worker: %s", task.exception())


class EdgeSite(web.BaseSite):
    """A TCP site whose connections are :class:`EdgeProtocol`s (``web.TCPSite`` hard-wires aiohttp's).

    With a :class:`edge.fastpath.FastPath`, each connection starts on the fast
    path, which hands it to an :class:`EdgeProtocol` for anything it does not take.
    """

    __slots__ = ("_host", "_port", "_guard", "_fast_path", "_reuse_port", "_factory", "_handler_args", "_sweeper")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        fast_path: FastPath | None = None,
        reuse_port: bool = False,
        backlog: int = 1024,
        **handler_args: Any,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard
        self._fast_path = fast_path
        self._reuse_port = reuse_port
        self._factory: Any = None
        self._handler_args = handler_args
        self._sweeper: asyncio.Task | None = None

    @property
    def port(self) -> int:
        """The bound port (useful after listening on port 0)."""
        if self._server is not None and self._server.sockets:
            return self._server.sockets[0].getsockname()[1]
        return self._port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def protocol() -> EdgeProtocol:
            return EdgeProtocol(server, loop=loop, guard=self._guard, **self._handler_args)

        def front() -> asyncio.Protocol:
            from edge.fastpath import FrontProtocol, to_protocol

            assert self._fast_path is not None
            return FrontProtocol(self._fast_path, self._guard, to_protocol(protocol))

        self._factory = protocol if self._fast_path is None else front
        if self._guard.body_timeout > 0:
            self._sweeper = loop.create_task(self._guard.sweep())
        self._server = await loop.create_server(
            self._factory, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port
        )

    def adopt(self, sock: socket.socket, data: bytes) -> None:
        """Carry on with a connection another process accepted and read ``data`` from (:mod:`edge.workers`)."""
        loop = asyncio.get_running_loop()
        protocol = self._factory()

        def prime() -> asyncio.Protocol:
            return _Primed(protocol, data)

        task = loop.create_task(loop.connect_accepted_socket(prime, sock))
        task.add_done_callback(_log_failed_adoption)

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await super().stop()
        if self._fast_path is not None:
            self._fast_path.begin_stop()
