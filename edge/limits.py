"""The edge's limits as an HTTP server: what aiohttp does not bound by itself.

aiohttp's server waits for a request head as long as the keep-alive timer
allows (an hour by default) and accepts connections without limit, so a few
hundred idle or trickling sockets ("slowloris") would hold the edge's file
descriptors and memory. :class:`EdgeProtocol` is aiohttp's own HTTP/1.1
protocol with two additions, and :class:`EdgeSite` listens with it:

* a request-head deadline (``EDGE_HEADER_TIMEOUT``): a connection that sends
  nothing, or whose request head is not complete in time, is closed. The
  clock starts when the connection opens and, on a kept-alive connection,
  when the first byte of the next request arrives. Bodies, streamed
  responses and WebSockets are not timed: a long upload or an HMR socket is
  legitimate.
* a cap on open client connections (``EDGE_MAX_CONNECTIONS``), so idle
  clients cannot exhaust file descriptors and memory. At the cap a new
  connection replaces the longest-open one that is idle (waiting for a
  request head), as nginx reuses idle keep-alive connections, so a flood of
  idle sockets cannot lock real clients out either; when every connection is
  busy, the new one is closed at once, before any byte is read.

Idle kept-alive connections are closed by aiohttp's own ``keepalive_timeout``
(``EDGE_KEEPALIVE_TIMEOUT``), which stays above a load balancer's idle timeout.

aiohttp has no hook for "a request head was parsed", so :class:`EdgeProtocol`
reads two attributes of its base class (``_waiter``, ``_request_count``), as
aiohttp's own keep-alive check does; aiohttp is pinned to 3.14.x and
``tests/test_server_limits.py`` fails if their meaning changes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

if TYPE_CHECKING:
    from edge.fastpath import FastPath

log = logging.getLogger("edge.limits")

REFUSAL_LOG_INTERVAL = 60.0


class GuardedConnection(Protocol):
    """What the guard needs of a connection (:class:`EdgeProtocol` and :class:`edge.fastpath.FrontProtocol`)."""

    def waiting_for_head(self) -> bool: ...

    def force_close(self) -> None: ...


class ConnectionGuard:
    """The open client connections of one listening site, oldest first, and the cap on them."""

    def __init__(self, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections  # 0: no cap
        self.header_timeout = header_timeout  # 0: no deadline
        self.refused = 0
        self._open: dict[GuardedConnection, None] = {}  # insertion-ordered: the oldest first
        self._warned_at = -REFUSAL_LOG_INTERVAL

    def admit(self, protocol: GuardedConnection) -> bool:
        """Count a new connection in, making room by closing an idle one; False when all are busy."""
        if self.max_connections and len(self._open) >= self.max_connections and not self._close_an_idle_one():
            self._refuse()
            return False
        self._open[protocol] = None
        return True

    def release(self, protocol: GuardedConnection) -> None:
        self._open.pop(protocol, None)

    def _close_an_idle_one(self) -> bool:
        # Busy connections met on the way go to the back, so the next search starts elsewhere.
        for _ in range(len(self._open)):
            protocol = next(iter(self._open))
            del self._open[protocol]
            if protocol.waiting_for_head():
                protocol.force_close()
                return True
            self._open[protocol] = None
        return False

    def _refuse(self) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= REFUSAL_LOG_INTERVAL:
            self._warned_at = now
            log.warning(
                "all %d client connections are busy (EDGE_MAX_CONNECTIONS): refusing new ones (%d refused so far)",
                len(self._open),
                self.refused,
            )


class EdgeProtocol(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with the connection cap and a request-head deadline."""

    __slots__ = ("_guard", "_admitted", "_head_timer")

    def __init__(self, manager: Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(self):
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release(self)
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self.waiting_for_head():
            self._start_head_clock()  # the first byte of the next request on a kept-alive connection
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._stop_head_clock()

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
        if self.waiting_for_head():
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

    __slots__ = ("_host", "_port", "_guard", "_fast_path", "_reuse_port", "_factory", "_handler_args")

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
        await super().stop()
        if self._fast_path is not None:
            self._fast_path.begin_stop()
