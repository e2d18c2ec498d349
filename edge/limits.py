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
  room, and health checks have a reserve (:class:`ConnectionGuard`).
* a deadline between request-body bytes (``EDGE_BODY_TIMEOUT``).
* the head limits of :data:`HEAD_LIMITS`, and parser errors answered in the
  edge's error shape with one rate-limited log line.

Idle kept-alive connections are closed by aiohttp's own ``keepalive_timeout``
(``EDGE_KEEPALIVE_TIMEOUT``), which stays above a load balancer's idle timeout.

aiohttp has no hook for "a request head was parsed", so :class:`EdgeProtocol`
reads attributes of its base class (``_waiter``, ``_request_count``,
``_current_request``, ``_payload_parser``, ``_reading_paused``), as aiohttp's
own keep-alive check does, and sets the version of its placeholder request
for unparsable heads (``_version``); aiohttp is pinned to 3.14.x and
``tests/test_server_limits.py`` fails if their meaning changes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from edge import reserved
from edge.errors import error_page, raw_error
from edge.headers import client_address, is_trusted

if TYPE_CHECKING:
    from edge.fastpath import FastPath
    from edge.settings import Settings

log = logging.getLogger("edge.limits")

REFUSAL_LOG_INTERVAL = 60.0


@dataclass(frozen=True)
class HeadLimits:
    """The limits on a request head, the same on every path (:mod:`edge.fastpath` hands over what exceeds them)."""

    max_line_size: int = 8190  # the request target (aiohttp's default)
    max_field_size: int = 8190  # one header's name and value together (aiohttp's default)
    max_headers: int = 128  # header fields (aiohttp's default)
    max_head: int = 16 * 1024  # the whole head, request line to blank line


HEAD_LIMITS = HeadLimits()
_ACCEPT = re.compile(rb"\r\naccept[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_FORWARDED_FOR = re.compile(rb"\r\nx-forwarded-for[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def peer_address(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    return peername[0] if isinstance(peername, (list, tuple)) and peername else ""


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds; the next line says how many were left out."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, burst: int = 5) -> None:
        self._log = logger
        self._interval = interval
        self._burst = burst
        self._window = -interval
        self._count = 0
        self._skipped = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= self._interval:
            self._window, self._count = now, 0
        if self._count >= self._burst:
            self._skipped += 1
            return
        self._count += 1
        if self._skipped:
            message += " (%d similar lines left out)"
            args = (*args, self._skipped)
            self._skipped = 0
        self._log.warning(message, *args)


class GuardedConnection(Protocol):
    """What the guard needs of a connection (:class:`EdgeProtocol` and :class:`edge.fastpath.FrontProtocol`)."""

    def waiting_for_head(self) -> bool: ...

    def receiving(self) -> bool: ...

    def body_stalled(self) -> bool: ...

    def force_close(self) -> None: ...


@dataclass(slots=True)
class Slot:
    """What the guard knows of one connection."""

    client: str  # the client's address (after trusted-proxy resolution, once a head said)
    last_read: float  # when the client last sent a byte (time.monotonic)
    reserve: bool = False  # admitted past the cap: only a health check is answered on it


class Admission(Enum):
    REFUSED = 0
    ADMITTED = 1
    RESERVE = 2  # at the cap with no connection to evict: for a load balancer's health check only


# Connections past the cap kept for health checks (each lives one health check at most).
HEALTH_RESERVE = 4
# Health checks (edge.reserved's any-host paths), the only requests answered on a reserve connection.
HEALTH_REQUESTS = tuple(
    f"{method} {path}{end}".encode() for method in ("GET", "HEAD") for path in sorted(reserved.paths(any_host=True)) for end in " ?"
)


class ConnectionGuard:
    """The open client connections of one listening site, and the limits on them.

    * at most ``max_connections``: at the cap a new connection makes room by
      closing the one that least looks like a working client: one waiting for
      a request head first, then one that is sending the server something (a
      head, a body, a WebSocket) from the client with the most connections,
      the one that sent nothing for longest first. Connections waiting for the
      upstream or reading a response are never closed to make room.
    * at most ``per_client`` connections from one client address (the address a
      trusted proxy names in ``X-Forwarded-For`` once a request head says it).
    * with nothing to close, a few reserve connections still answer health
      checks, so a load balancer never sees the edge as dead while one client
      holds the cap; anything else on them gets 503.
    * a request body that sends nothing for ``body_timeout`` seconds ends its connection.
    """

    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        *,
        per_client: int = 0,
        body_timeout: float = 0.0,
        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
    ) -> None:
        self.max_connections = max_connections  # 0: no cap
        self.header_timeout = header_timeout  # 0: no deadline
        self.per_client = per_client  # 0: no limit
        self.body_timeout = body_timeout  # 0: no deadline
        self.trusted = trusted
        self.refused = 0
        self.evicted = 0
        self._open: dict[GuardedConnection, Slot] = {}
        self._clients: Counter[str] = Counter()
        self._reserved = 0
        self._warned_at = -REFUSAL_LOG_INTERVAL
        self.bad_requests = RateLimitedLog(log)  # one line per bad request, a few per interval at most
        self._clock = time.monotonic

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionGuard:
        return cls(
            settings.max_connections,
            settings.header_timeout,
            per_client=settings.max_connections_per_client,
            body_timeout=settings.body_timeout,
            trusted=settings.trusted_proxies,
        )

    def admit(self, protocol: GuardedConnection, address: str) -> Admission:
        """Count a new connection from ``address`` in, making room if the cap is reached."""
        if self.per_client and self._clients[address] >= self.per_client and not is_trusted(address, self.trusted):
            self._refuse(f"{address} has {self.per_client} connections (EDGE_MAX_CONNECTIONS_PER_CLIENT)")
            return Admission.REFUSED
        admission = Admission.ADMITTED
        if self.max_connections and len(self._open) - self._reserved >= self.max_connections and not self._evict():
            if self._reserved >= HEALTH_RESERVE:
                self._refuse(f"all {len(self._open)} client connections are busy (EDGE_MAX_CONNECTIONS)")
                return Admission.REFUSED
            admission = Admission.RESERVE
            self._reserved += 1
        self._open[protocol] = Slot(address, self._clock(), admission is Admission.RESERVE)
        self._clients[address] += 1
        return admission

    def release(self, protocol: GuardedConnection) -> None:
        slot = self._open.pop(protocol, None)
        if slot is None:
            return
        self._uncount(slot.client)
        if slot.reserve:
            self._reserved -= 1

    def read(self, protocol: GuardedConnection) -> None:
        """The client sent bytes on this connection."""
        slot = self._open.get(protocol)
        if slot is not None:
            slot.last_read = self._clock()

    def attribute(self, protocol: GuardedConnection, client: str) -> bool:
        """A request head named the client behind a trusted proxy; False when that client is over its limit."""
        slot = self._open.get(protocol)
        if slot is None or slot.client == client:
            return True
        self._uncount(slot.client)
        slot.client = client
        self._clients[client] += 1
        if self.per_client and self._clients[client] > self.per_client and not is_trusted(client, self.trusted):
            self._refuse(f"{client} has {self.per_client} connections (EDGE_MAX_CONNECTIONS_PER_CLIENT)")
            return False
        return True

    def _uncount(self, client: str) -> None:
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]

    def _evict(self) -> bool:
        """Close the connection that least looks like a working client (see the class); False if none may go."""
        victim: GuardedConnection | None = None
        best: tuple[bool, int, float] | None = None
        for protocol, slot in self._open.items():
            if slot.reserve:
                continue
            idle = protocol.waiting_for_head()
            if not idle and not protocol.receiving():
                continue
            key = (not idle, -self._clients[slot.client], slot.last_read)
            if best is None or key < best:
                victim, best = protocol, key
        if victim is None:
            return False
        self.release(victim)
        self.evicted += 1
        victim.force_close()
        return True

    def check_bodies(self) -> None:
        """Close connections whose request body sent nothing for ``body_timeout`` seconds."""
        deadline = self._clock() - self.body_timeout
        for protocol, slot in list(self._open.items()):
            if slot.last_read < deadline and protocol.body_stalled():
                log.info("closing a connection from %s: its request body sent nothing for %gs (EDGE_BODY_TIMEOUT)", slot.client, self.body_timeout)
                self.release(protocol)
                protocol.force_close()

    async def sweep(self) -> None:
        """Run :meth:`check_bodies` a few times per ``body_timeout`` (a task of the listening site)."""
        interval = max(0.05, min(1.0, self.body_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.check_bodies()

    def _refuse(self, why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= REFUSAL_LOG_INTERVAL:
            self._warned_at = now
            log.warning("refusing new connections: %s (%d refused so far)", why, self.refused)


def is_health_check(head: bytes) -> bool | None:
    """Whether a head's first bytes are a health check; None while too few have arrived to say."""
    for start in HEALTH_REQUESTS:
        if head.startswith(start):
            return True
        if start.startswith(bytes(head)):
            return None
    return False


class EdgeProtocol(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with the connection cap, a request-head deadline and size limit,
    and parser errors answered in the edge's shape."""

    __slots__ = ("_guard", "_admitted", "_head_timer", "_head", "_in_head", "_accept_seen", "_reserve")

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

    def data_received(self, data: bytes) -> None:
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
