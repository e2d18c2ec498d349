"""The fast path: plain GETs to a ready preview, proxied below aiohttp.

Nearly all of a preview's traffic is GETs of pages, scripts and styles (one
Astro page load is 30-100 of them). Through aiohttp's server and client a
proxied request costs about 600 µs of CPU on the project's machine; here
the same request is proxied at the transport level (llhttp, through
httptools, parses both heads; bodies pass as they arrive) for a fraction of
that. What a client, the upstream and the logs see stays the same, because
the decisions are shared, not copied: the routing decision of
:mod:`edge.classify`, the Vite guard's test of :mod:`edge.viteguard`, the
header rules of :mod:`edge.headers`, the exchange lifecycle of
:mod:`edge.exchange` (flow record, upstream URL, idle accounting, proxy log,
metrics and typed upstream error kinds), and the server limits of :mod:`edge.limits` (head
limits and deadline, keep-alive timer, connection guard). What is left here
is what makes it fast: parsing with llhttp, one write per upstream read, a
kept-alive upstream connection per client connection.

Every client connection starts here. A request the fast path does not take
(another method, a body, an upgrade, HTTP/1.0, one of the edge's own routes,
a host or session it cannot route at once, a head it cannot parse) is
handed, with the rest of the connection, to aiohttp's protocol, and the full
edge answers it and everything after it on that connection. So aiohttp's
path defines the edge's behaviour; this is an optimisation of one case of
it, and ``EDGE_FAST_PATH=0`` turns it off.

A page or module under a session prefix whose URLs the edge rewrites
(:mod:`edge.prefixing`) is answered here too, so a tab's connections stay on
this path: a page streams, rewritten piece by piece in chunks; a module is
held until its body is complete, then sent rewritten with its new length (one
bigger than ``prefixing.MAX_BODY`` is sent on unchanged as it arrives; one
whose upstream ends it by closing is asked again through aiohttp's path).
Which answers are rewritten, and how, is :func:`edge.prefixing.treatment`,
the rule aiohttp's path follows too.

An upstream that fails before its response head (refused, reset, or a
kept-alive connection it had closed) gets the request replayed through
aiohttp's path, which retries once and reports a failure as usual: nothing
reached the client yet, and a GET is safe to repeat.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import httptools
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from edge import exchange as exchanges
from edge import hostredirect, keys, metrics, prefixing, viteguard
from edge.classify import classify
from edge.errors import raw_error, response_head
from edge.exchange import Exchange, Tally
from edge.flow import ProxyFlow, UpstreamError
from edge.headers import Peer, client_address, client_response_headers, make_peer, upstream_request_headers
from edge.connguard import Admission, ConnectionGuard, peer_address
from edge.headlimits import HEAD_LIMITS
from edge.routing import Match, Route, RouteState

log = logging.getLogger(__name__)

# Bytes read ahead of the request being answered before reading pauses.
READ_AHEAD = 256 * 1024
# Request headers that take a request off the fast path (bodies, upgrades, 100-continue).
NOT_FAST = ("content-length", "transfer-encoding", "upgrade", "expect")
CHUNK_END = b"0\r\n\r\n"


def _text(raw: bytes) -> str:
    """Bytes of a head as the rest of the edge sees them (aiohttp decodes the same way)."""
    return raw.decode("utf-8", "surrogateescape")


# Gives a connection, with the bytes read but not answered, to whoever handles the rest of it.
PassOn = Callable[[asyncio.Transport, bytes], None]


def to_protocol(make_handler: Callable[[], asyncio.Protocol]) -> PassOn:
    """Hand connections to a protocol of this process (aiohttp's, through :class:`edge.limits.EdgeProtocol`)."""

    def pass_on(transport: asyncio.Transport, data: bytes) -> None:
        handler = make_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if data and not transport.is_closing():
            handler.data_received(data)

    return pass_on


class FastPath:
    """One app's fast path: what an exchange needs, and the connections it holds."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.exchanges = exchanges.setup(app)  # the same lifecycle as aiohttp's path
        self.settings = app[keys.SETTINGS]
        self.table = app[keys.SESSIONS]
        self.hosts = app[keys.HOSTS]
        self.proxy_log = app[keys.PROXY_LOG]
        self.connections: set[FrontProtocol] = set()
        self.stopping = False
        self.proxied = 0  # requests answered here
        self.handed_over = 0  # connections passed to aiohttp's protocol

    def route(self, raw_path: str, headers: CIMultiDict[str]) -> tuple[Match, Route] | None:
        """The session and ready route of a plain GET, or None when aiohttp's path must decide."""
        for name in NOT_FAST:
            if name in headers:
                return None
        found = classify(raw_path, "GET", headers, self.hosts, upgrade=False)
        if not isinstance(found, Match):
            return None
        if self.settings.preview_host_redirect and hostredirect.location(
            found, "GET", headers, True, self.settings.session_host_patterns
        ):
            return None  # aiohttp's path answers the redirect
        route = self.table.get(found.session_id)
        if route is None or route.state is not RouteState.READY or route.target is None:
            return None
        if viteguard.refusal(found.upstream_path, route.root) is not None:
            return None  # aiohttp's path answers the 403 (most targets need no check: /node_modules/.vite/ one does)
        return found, route

    @property
    def tally(self) -> Tally:
        """The metrics of the exchanges since the last fold (a worker process takes and replaces it)."""
        return self.exchanges.tally

    @tally.setter
    def tally(self, tally: Tally) -> None:
        self.exchanges.tally = tally

    def begin_stop(self) -> None:
        """Stop taking requests: idle connections close now, busy ones after their answer."""
        self.stopping = True
        for connection in list(self.connections):
            connection.close_when_idle()

    async def sweep(self, app: web.Application) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: close connections past their deadlines, a few times a second.

        One periodic check instead of a timer per request: arming and
        cancelling three timers per request cost more than the rest of the
        bookkeeping, and these deadlines need no finer resolution.
        """
        settings = self.settings
        shortest = min(t for t in (settings.header_timeout, settings.keepalive_timeout, settings.first_byte_timeout, 1.0) if t > 0)
        interval = max(0.05, shortest / 4)

        async def run() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(interval)
                now = loop.time()
                for connection in list(self.connections):
                    connection.check_deadlines(now)

        task = asyncio.create_task(run())
        yield
        task.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for answers in progress, then close what is left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.force_close()


FAST_PATH = web.AppKey("fast_path", FastPath)


class _RequestHead:
    """httptools' callbacks for one request head."""

    __slots__ = ("parser", "url", "headers", "complete", "keep_alive", "over_limit")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.reset()

    def reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False
        self.keep_alive = True
        self.over_limit = False  # past one of aiohttp's head limits: aiohttp's path answers it (400)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > HEAD_LIMITS.max_line_size:
            self.over_limit = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > HEAD_LIMITS.max_field_size or len(self.headers) >= HEAD_LIMITS.max_headers:
            self.over_limit = True
        self.headers.append((_text(name), _text(value)))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True


@dataclass
class FastRequest:
    """One request on the fast path, from its head to the end of its answer (its :class:`Exchange` aside)."""

    exchange: Exchange
    flow: ProxyFlow  # the exchange's record
    match: Match
    route: Route
    peer: Peer
    head: bytes  # the request as the client sent it (replayed through aiohttp if the upstream fails first)
    keep_alive: bool
    head_sent: bool = False
    chunked: bool = False  # the answer is re-framed as chunks (the upstream's length is unknown)
    until_close: bool = False  # the upstream's body ends when it closes the connection
    held: list[bytes] | None = None  # the body of a page or module being held for edge.prefixing
    held_size: int = 0
    held_head: CIMultiDict[str] | None = None  # the answer's headers, sent with the rewritten body
    page: prefixing.PageRewriter | None = None  # a page under a prefix, rewritten as it streams
    deadline: float | None = None  # for the upstream's response head (EDGE_FIRST_BYTE_TIMEOUT)
    connecting: asyncio.Task | None = field(default=None, repr=False)


class UpstreamProtocol(asyncio.Protocol):
    """A kept-alive connection to one upstream, owned by one client connection."""

    def __init__(self, front: FrontProtocol, target: URL) -> None:
        self.front = front
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle = True
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[str, str]] = []
        self.informational = False
        self.complete = False
        self.keep_alive = True
        # Bytes after the complete answer (a second response nobody asked for): never
        # passed on, and the connection is not reused, as nginx does.
        self.surplus = False

    def usable_for(self, target: URL) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.idle and self.target == target

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.reset()
        self.idle = False
        self.transport.write(payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:  # nothing was asked: these bytes answer no request
            self.surplus = True
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if isinstance(exc, httptools.HttpParserCallbackError):
                log.exception("fast path: handling an upstream response failed")
            if not self.complete:
                self.front.upstream_failed(self, f"stream broke mid-body: invalid response ({type(exc).__name__})")
                return
            self.surplus = True  # garbage after a complete answer
        self.front.upstream_progress(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.front.upstream_lost(self)

    # httptools callbacks (each ignores what follows a complete answer)
    def on_message_begin(self) -> None:
        if self.complete:
            self.surplus = True

    def on_status(self, status: bytes) -> None:
        if not self.complete:
            self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.complete:
            self.headers.append((_text(name), _text(value)))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if status < 200:  # 1xx (103 Early Hints): not passed on, as aiohttp's client drops it too
            self.informational = True
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        self.front.response_head(self)

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.front.response_body(self, body)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self.informational:
            self.reset()
            return
        self.complete = True

    def pause_writing(self) -> None:
        """Requests are only heads: nothing to hold back."""

    def resume_writing(self) -> None:
        """See :meth:`pause_writing`."""


class FrontProtocol(asyncio.Protocol):
    """A client connection: plain GETs to ready previews are proxied here, anything else goes to aiohttp."""

    def __init__(self, fast: FastPath, guard: ConnectionGuard, pass_on: PassOn) -> None:
        self._fast = fast
        self._guard = guard
        self._pass_on = pass_on
        self.transport: asyncio.Transport | None = None
        self._remote = ""
        self._admitted = False
        self._buffer = bytearray()
        self._head = _RequestHead()
        self._exchange: FastRequest | None = None
        self._upstream: UpstreamProtocol | None = None
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._deadline: float | None = None  # for the request head, or the keep-alive limit when idle
        self._reading_paused = False
        self._closing = False
        self._reserve = False

    # -- the connection ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._remote = peer_address(transport)
        admission = self._guard.admit(self, self._remote)
        if admission is Admission.REFUSED:
            transport.close()
            return
        self._admitted = True
        self._reserve = admission is Admission.RESERVE  # health checks only: aiohttp's path decides
        self.transport = transport  # type: ignore[assignment]
        self._fast.connections.add(self)
        self._arm(self._fast.settings.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._guard.release(self)
        self._fast.connections.discard(self)
        self._disarm()
        self.transport = None
        exchange = self._exchange
        if exchange is not None:  # the client went away mid-answer (nginx's 499)
            self._drop_upstream()
            self._finish(exchange, status=metrics.CLIENT_CLOSED)
        elif self._upstream is not None:
            self._drop_upstream()

    def data_received(self, data: bytes) -> None:
        self._guard.read(self)
        if self._exchange is None and not self._buffer:
            self._arm(self._fast.settings.header_timeout)  # a new request begins
        self._buffer += data
        if self._exchange is None:
            self._next_request()
        elif len(self._buffer) > READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        """A client that closes its side has gone, as for aiohttp: the answer in progress is cancelled."""
        return False

    def pause_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()

    # -- what the connection guard and stopping ask ------------------------

    @property
    def busy(self) -> bool:
        return self._exchange is not None

    def waiting_for_head(self) -> bool:
        """Idle: open, with no request being answered (:class:`edge.connguard.ConnectionGuard` closes these first)."""
        return self.transport is not None and self._exchange is None

    def receiving(self) -> bool:
        """Waiting on the client (the fast path's requests have no body)."""
        return self.waiting_for_head()

    def body_stalled(self) -> bool:
        return False

    def force_close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def close_when_idle(self) -> None:
        self._closing = True
        if self._exchange is None:
            self.force_close()

    # -- deadlines (checked by FastPath.sweep) ---------------------------------

    def _arm(self, delay: float) -> None:
        self._deadline = self._loop.time() + delay if delay > 0 else None

    def _disarm(self) -> None:
        self._deadline = None

    def check_deadlines(self, now: float) -> None:
        exchange = self._exchange
        if exchange is not None:
            if exchange.deadline is not None and now >= exchange.deadline:
                self._first_byte_timeout(exchange)
        elif self._deadline is not None and now >= self._deadline:
            log.debug("closing an idle connection from %s (no complete request head in time, or kept alive too long)", self._remote)
            self._deadline = None
            self.force_close()

    # -- requests ---------------------------------------------------------

    def _next_request(self) -> None:
        """Take the next buffered request if its head is complete: proxy it here, or hand the connection over."""
        if self._closing or self._fast.stopping:
            self.force_close()
            return
        if self._reserve or not b"GET "[: len(self._buffer)] == self._buffer[:4]:
            self._hand_over()  # another method (or garbage): aiohttp's from the first bytes
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or end + 4 > HEAD_LIMITS.max_head:
            if len(self._buffer) > HEAD_LIMITS.max_head or b"\n\n" in self._buffer:
                self._hand_over()  # too long, or bare LF line ends: aiohttp's limits and parser decide
            return
        head = bytes(self._buffer[: end + 4])
        parsed = self._parse(head)
        if parsed is None:
            self._hand_over()
            return
        raw_path, headers = _text(parsed.url), CIMultiDict(parsed.headers)
        if self._guard.per_client and "X-Forwarded-For" in headers:
            trusted = self._guard.trusted
            if not self._guard.attribute(self, client_address(self._remote, headers.getall("X-Forwarded-For"), trusted)):
                self._hand_over()  # aiohttp's path answers 429 in the edge's shape
                return
        taken = self._fast.route(raw_path, headers)
        if taken is None:
            self._hand_over()
            return
        self._disarm()
        del self._buffer[: end + 4]
        self._start(head, raw_path, headers, parsed.keep_alive, *taken)

    def _parse(self, head: bytes) -> _RequestHead | None:
        """The head of a complete GET without a body, in HTTP/1.1; None for anything else."""
        parsed = self._head
        parsed.reset()
        try:
            parsed.parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None  # aiohttp's parser answers it (400, or a WebSocket)
        if parsed.over_limit or not parsed.complete:
            return None
        if parsed.parser.get_method() != b"GET" or parsed.parser.get_http_version() != "1.1":
            return None
        return parsed

    def _start(
        self, head: bytes, raw_path: str, headers: CIMultiDict[str], keep_alive: bool, match: Match, route: Route
    ) -> None:
        fast = self._fast
        assert route.target is not None
        peer = make_peer(self._remote, headers, "http", fast.settings.trusted_proxies)
        ex = fast.exchanges.begin(match, route.target, peer, method="GET", raw_path=raw_path, http_version="HTTP/1.1", headers=headers)
        flow = ex.flow
        upstream_headers = upstream_request_headers(headers, route.target, peer, match.prefix, flow)
        flow.upstream_headers = upstream_headers
        exchange = FastRequest(ex, flow, match, route, peer, head, keep_alive=keep_alive)
        self._exchange = exchange
        lines = [f"GET {match.upstream_path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in upstream_headers.items()]
        lines.append("\r\n")
        payload = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        upstream = self._upstream
        if upstream is not None and upstream.usable_for(route.target):
            self._send(exchange, upstream, payload)
            return
        self._drop_upstream()
        exchange.connecting = asyncio.ensure_future(self._connect(exchange, route.target, payload))

    async def _connect(self, exchange: FastRequest, target: URL, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._fast.settings.connect_timeout):
                _, upstream = await loop.create_connection(
                    lambda: UpstreamProtocol(self, target), target.host, target.port
                )
        except (OSError, TimeoutError):
            if self._exchange is exchange:
                self._replay(exchange)
            return
        finally:
            exchange.connecting = None
        if self._exchange is not exchange or self.transport is None:  # the client left meanwhile
            upstream.close()
            return
        self._upstream = upstream
        self._send(exchange, upstream, payload)

    def _send(self, exchange: FastRequest, upstream: UpstreamProtocol, payload: bytes) -> None:
        upstream.send(payload)
        if self._fast.settings.first_byte_timeout > 0:
            exchange.deadline = self._loop.time() + self._fast.settings.first_byte_timeout

    # -- the upstream's answer ----------------------------------------------

    def response_head(self, upstream: UpstreamProtocol) -> None:
        exchange = self._exchange
        if exchange is None or upstream is not self._upstream:
            return
        exchange.deadline = None
        flow, match, route = exchange.flow, exchange.match, exchange.route
        assert route.target is not None
        received = CIMultiDict(upstream.headers)
        flow.status = upstream.status
        flow.reason = _text(upstream.reason)
        flow.upstream_response_headers = received
        exchange.exchange.upstream_head()
        out = client_response_headers(received, route.target, exchange.peer, match, flow)
        kind = prefixing.treatment(match, flow.client_headers, self._fast.settings.tab_isolation, upstream.status, received)
        if kind == "html":
            exchange.page = prefixing.PageRewriter(match.prefix.encode())  # its new length is unknown: chunks
            out.popall("Content-Length", None)
        elif kind == "js":  # held until complete; an upstream that ends it by closing gets it asked again (upstream_lost)
            if self._closes_after(exchange):
                out["Connection"] = "close"
            exchange.held, exchange.held_head = [], out  # sent when the body is complete (upstream_progress)
            return
        if upstream.status not in (204, 304):
            length_known = "Transfer-Encoding" in received or "Content-Length" in received
            if exchange.page is not None or not length_known or "Transfer-Encoding" in received:
                exchange.chunked = True
                exchange.until_close = not length_known
                out["Transfer-Encoding"] = "chunked"
        if self._closes_after(exchange):
            out["Connection"] = "close"
        flow.response_headers = out
        exchange.head_sent = True
        self._out.append(response_head(upstream.status, flow.reason, out))

    def _send_held(self, exchange: FastRequest, rewrite: bool) -> None:
        """Send the held answer: rewritten with its new length, or (too big to hold) as it came, the rest to follow."""
        flow, out, body = exchange.flow, exchange.held_head, b"".join(exchange.held or ())
        assert out is not None
        exchange.held, exchange.held_head = None, None
        if rewrite:
            body = prefixing.rewrite(body, "js", exchange.match.prefix, exchange.match.upstream_path)
            out.popall("Transfer-Encoding", None)
            out["Content-Length"] = str(len(body))
        elif "Content-Length" not in out:
            exchange.chunked = True
            out["Transfer-Encoding"] = "chunked"
        flow.response_headers = out
        exchange.head_sent = True
        self._out.append(response_head(flow.status or 200, flow.reason, out))
        flow.bytes_out = 0
        if body:
            self._pass_body(exchange, body)

    def response_body(self, upstream: UpstreamProtocol, body: bytes) -> None:
        exchange = self._exchange
        if exchange is None or upstream is not self._upstream or not body:
            return
        if exchange.held is not None:
            exchange.held.append(body)
            exchange.held_size += len(body)
            if exchange.held_size > prefixing.MAX_BODY:
                self._send_held(exchange, rewrite=False)
            return
        if exchange.page is not None:
            body = exchange.page.feed(body)
            if not body:
                return  # all of it held: a tag cut at the end of this piece
        self._pass_body(exchange, body)

    def _pass_body(self, exchange: FastRequest, body: bytes) -> None:
        """Pass on a piece of the answer's body (as a chunk when the answer is re-framed)."""
        exchange.flow.bytes_out += len(body)
        if exchange.chunked:
            self._out.append(b"%x\r\n" % len(body))
            self._out.append(body)
            self._out.append(b"\r\n")
        else:
            self._out.append(body)

    def upstream_progress(self, upstream: UpstreamProtocol) -> None:
        """After each read from the upstream: send what it produced in one write, end a complete answer."""
        exchange = self._exchange
        if exchange is None or upstream is not self._upstream:
            return
        if upstream.complete:
            if exchange.held is not None:
                self._send_held(exchange, rewrite=True)
            self._end_body(exchange)
        self._flush()
        if upstream.complete:
            upstream.idle = True
            if not upstream.keep_alive or upstream.surplus:
                self._drop_upstream()
            self._finish(exchange)

    def _end_body(self, exchange: FastRequest) -> None:
        """End the answer's body: what a streamed page still holds (a last tag), then the last chunk if re-framed."""
        if exchange.page is not None:
            tail, exchange.page = exchange.page.close(), None
            if tail:
                self._pass_body(exchange, tail)
        if exchange.chunked:
            self._out.append(CHUNK_END)

    def upstream_lost(self, upstream: UpstreamProtocol) -> None:
        if upstream is not self._upstream:
            return
        self._upstream = None
        exchange = self._exchange
        if exchange is None:
            return  # an idle kept-alive connection the upstream closed
        if not exchange.head_sent:
            self._replay(exchange)
        elif exchange.until_close:  # the connection's end is the body's end (re-framed as chunks)
            self._end_body(exchange)
            self._flush()
            self._finish(exchange)
        else:
            self.upstream_failed(upstream, "stream broke mid-body: upstream closed the connection")

    def upstream_failed(self, upstream: UpstreamProtocol, error: str) -> None:
        """The upstream broke its answer: before the head, replay it; after, cut the client's connection."""
        exchange = self._exchange
        if upstream is self._upstream:
            self._drop_upstream()
        if exchange is None:
            return
        if not exchange.head_sent:
            self._replay(exchange)
            return
        exchange.exchange.fail(UpstreamError.RESET, error)
        self._flush()
        self._closing = True
        self.force_close()
        self._finish(exchange)

    def _first_byte_timeout(self, exchange: FastRequest) -> None:
        exchange.deadline = None
        if self._exchange is not exchange or exchange.head_sent:
            return
        self._drop_upstream()
        exchange.exchange.fail(UpstreamError.TIMEOUT, "upstream timeout")
        self._answer_error(exchange, 504, "The preview did not answer in time.", "Try again; if it persists, restart the preview.")
        self._finish(exchange)

    def _answer_error(self, exchange: FastRequest, status: int, error: str, hint: str) -> None:
        accept = exchange.flow.client_headers.get("Accept", "")
        headers, answer = raw_error(accept, status, error, hint, close=self._closes_after(exchange))
        exchange.flow.status = status
        exchange.flow.response_headers = headers
        exchange.head_sent = True
        self._out.append(answer)
        self._flush()

    def _flush(self) -> None:
        if self._out:
            if self.transport is not None:
                self.transport.write(b"".join(self._out))
            self._out.clear()

    def _finish(self, exchange: FastRequest, status: int | None = None) -> None:
        """End the exchange (logged, counted, the edge idle again), and go on to the next request (or close)."""
        self._exchange = None
        if exchange.connecting is not None:
            exchange.connecting.cancel()
        fast = self._fast
        exchange.exchange.end(status)
        fast.proxied += 1
        if self.transport is None:
            return
        if self._closes_after(exchange):
            self.transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        if self._buffer:
            self._arm(fast.settings.header_timeout)
            self._next_request()
        else:
            self._arm(fast.settings.keepalive_timeout)

    def _closes_after(self, exchange: FastRequest) -> bool:
        """Whether the connection ends with this answer (the client asked, or the edge is stopping)."""
        return not exchange.keep_alive or self._closing or self._fast.stopping

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    # -- leaving the fast path ------------------------------------------------

    def _replay(self, exchange: FastRequest) -> None:
        """The upstream failed before answering: aiohttp's path takes the request again, and the connection."""
        self._exchange = None
        exchange.exchange.abandon()  # aiohttp's path begins the exchange again
        self._out.clear()
        self._buffer[:0] = exchange.head
        self._hand_over()

    def _hand_over(self) -> None:
        """Give the connection, with the bytes not yet answered, to aiohttp's protocol (for good)."""
        transport = self.transport
        if transport is None:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        self._disarm()
        self._drop_upstream()
        self._fast.connections.discard(self)
        self._fast.handed_over += 1
        self._guard.release(self)
        self._admitted = False
        self.transport = None
        if self._reading_paused:
            transport.resume_reading()
        self._pass_on(transport, data)


def setup(app: web.Application) -> FastPath:
    """Create the app's fast path; :class:`edge.limits.EdgeSite` puts it in front of aiohttp's protocol."""
    from edge import stopping

    fast = app[FAST_PATH] = FastPath(app)
    app.cleanup_ctx.append(fast.sweep)
    stopping.add_drain(app, fast.drain)
    return fast
