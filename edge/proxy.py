"""The reverse proxy: the one place that turns a client request into an upstream request.

Bodies stream both ways (only a small response body of known length is read
whole, to send it with the head in one write), ``Content-Encoding`` passes
untouched, and every header change is recorded on the flow.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from edge import exchange, hostredirect, keys, metrics, prefixing, startpage, viteguard
from edge.auth import cross_site_upgrade
from edge.errors import error_response
from edge.exchange import EXCHANGES, Exchange
from edge.flow import ProxyFlow, UpstreamError
from edge.headers import Peer, client_response_headers, make_peer, upstream_request_headers
from edge.classify import DECISION, Own, Refusal, classify
from edge.routing import Match, Redirect, Route
from edge import websocket
from edge.websocket import is_upgrade, relay_websocket

# Upstream bodies up to this size (with a Content-Length) are read whole and sent with the head in one write.
SMALL_BODY = 64 * 1024
BROKEN_STREAM = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError)


def redirect(location: str) -> web.Response:
    """A 307 with ``location`` byte-identical (aiohttp's HTTPTemporaryRedirect re-encodes it)."""
    return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-store"})


async def handle(request: web.Request) -> web.StreamResponse:
    """Catch-all handler: a request none of the edge's own routes took, decided by :func:`edge.classify.classify`."""
    upgrade = is_upgrade(request)
    found = request.get(DECISION)
    if found is None:  # not through the host_policy middleware
        found = classify(request.raw_path, request.method, request.headers, request.app[keys.HOSTS], upgrade=upgrade)
    if isinstance(found, Match):
        settings = request.app[keys.SETTINGS]
        moved = hostredirect.location(
            found, request.method, request.headers, settings.preview_host_redirect, settings.session_host_patterns
        )
        if moved is not None:
            return redirect(moved)  # EDGE_PREVIEW_HOST_REDIRECT: a page load goes to the session's own host
        return await proxy_session(request, found, upgrade)
    if isinstance(found, Redirect):
        return redirect(found.location)
    if isinstance(found, Refusal):
        return error_response(request, found.status, found.error, found.hint)
    if isinstance(found, Own):
        return error_response(request, 404, f"No such edge route: {request.method} {request.path}")
    return error_response(
        request,
        404,
        "This address belongs to no preview session.",
        "Open a preview at /session/<sessionId>/ (Hermes' reply links to it).",
    )


async def proxy_session(request: web.Request, found: Match, upgrade: bool) -> web.StreamResponse:
    """Forward a request that belongs to a session (HTTP or WebSocket) and log its flow."""
    metrics.mark_proxied(request)
    if upgrade:
        refused = cross_site_upgrade(request)  # before a dev server is started or reached
        if refused is not None:
            return refused
    table = request.app[keys.SESSIONS]
    route = await table.lookup(found.session_id)
    if route is None:
        return error_response(
            request,
            404,
            f"Preview session {found.session_id!r} does not exist.",
            "It may have ended; ask for a new preview link.",
        )
    unavailable = _unavailable(request, route)
    if unavailable is not None:
        return unavailable
    assert route.target is not None
    refused = viteguard.refusal(found.upstream_path, route.root)
    if refused is not None:
        return error_response(request, 403, refused)
    settings = request.app[keys.SETTINGS]
    peer = make_peer(request.remote, request.headers, request.scheme, settings.trusted_proxies)
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    ex = request.app[EXCHANGES].begin(
        found, route.target, peer, method=request.method, raw_path=request.raw_path, http_version=version, headers=request.headers
    )
    request[metrics.COUNTED] = True  # the exchange counts itself when it ends
    status: int | None = None
    try:
        if upgrade:
            response = await relay_websocket(request, found, route, peer, ex)
        else:
            response = await forward_http(request, found, route, peer, ex)
        status = ex.flow.status or response.status
        return response
    except asyncio.CancelledError:
        # The client left mid-answer (nginx's 499); a WebSocket keeps its status (it was a 101).
        status = None if ex.flow.websocket and ex.flow.status else metrics.CLIENT_CLOSED
        raise
    except BaseException:
        status = 500
        raise
    finally:
        ex.end(status)


def _unavailable(request: web.Request, route: Route) -> web.StreamResponse | None:
    return startpage.unavailable(request, route)  # the waiting page for site owners, 503/502 for machines


async def forward_http(request: web.Request, found: Match, route: Route, peer: Peer, ex: Exchange) -> web.StreamResponse:
    """Forward one HTTP exchange, streaming both bodies."""
    assert route.target is not None
    flow = ex.flow
    headers = upstream_request_headers(request.headers, route.target, peer, found.prefix, flow)
    flow.upstream_headers = headers
    try:
        # encoded=True: the raw path and query go upstream byte-identical, never re-quoted.
        upstream = await _send(request, URL(flow.upstream_url, encoded=True), headers, flow)
    except TimeoutError:
        ex.fail(UpstreamError.TIMEOUT, "upstream timeout", 504)
        return error_response(request, 504, "The preview did not answer in time.", "Try again; if it persists, restart the preview.")
    except (aiohttp.ClientError, OSError) as exc:
        ex.fail(_unreachable_kind(exc), f"upstream unreachable: {type(exc).__name__}", 502)
        return error_response(request, 502, "The preview server is not reachable.", "It may have stopped; restart the preview.")

    ex.upstream_head()
    async with upstream:
        flow.status = upstream.status
        flow.reason = upstream.reason or ""
        flow.upstream_response_headers = upstream.headers
        out_headers = client_response_headers(upstream.headers, route.target, peer, found, flow)
        has_body = request.method != "HEAD" and upstream.status not in (204, 304)
        kind = prefixing.treatment(found, request.headers, request.app[keys.SETTINGS].tab_isolation, upstream.status, upstream.headers)
        if kind is not None:
            if has_body:
                return await _answer_rewritten(request, upstream, out_headers, ex, found, kind)
            out_headers.popall("Content-Length", None)  # HEAD: a GET's body would be rewritten, to a length unknown here
        length = upstream.content_length
        if has_body and length is not None and length <= SMALL_BODY and "Transfer-Encoding" not in upstream.headers:
            return await _answer_whole(request, upstream, out_headers, ex)
        return await _stream(request, upstream, out_headers, ex, has_body)


async def _stream(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    ex: Exchange,
    has_body: bool,
    head: bytes = b"",
    page: prefixing.PageRewriter | None = None,
) -> web.StreamResponse:
    """Answer with the body as it arrives (``head``: the part read already; ``page``: rewrite it on the way)."""
    flow = ex.flow
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    flow.response_headers = response.headers
    await response.prepare(request)
    if head:
        await response.write(head)
        flow.bytes_out += len(head)
    if has_body:
        try:
            async for chunk in upstream.content.iter_any():
                if page is not None:
                    chunk = page.feed(chunk)
                await response.write(chunk)
                flow.bytes_out += len(chunk)
        except BROKEN_STREAM as exc:
            return _cut(request, response, ex, exc)
        if page is not None:
            tail = page.close()
            await response.write(tail)
            flow.bytes_out += len(tail)
    await response.write_eof()
    return response


async def _answer_whole(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], ex: Exchange
) -> web.StreamResponse:
    """A small body of known length: read it whole and answer in one write (head and body together).

    If the upstream breaks off mid-body, the client gets what streaming would
    have given it: the head, the bytes that arrived, then a cut connection.
    """
    flow = ex.flow
    chunks: list[bytes] = []
    try:
        async for chunk in upstream.content.iter_any():
            chunks.append(chunk)
    except BROKEN_STREAM as exc:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        flow.response_headers = response.headers
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
            flow.bytes_out += len(chunk)
        return _cut(request, response, ex, exc)
    body = b"".join(chunks)
    response = web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
    flow.response_headers = response.headers
    flow.bytes_out = len(body)
    return response


async def _answer_rewritten(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], ex: Exchange, found: Match, kind: str
) -> web.StreamResponse:
    """A page or module asked for under a session prefix, its root-absolute URLs under that prefix.

    A page streams, rewritten chunk by chunk. A module is read whole (its
    imports are found by the text before them); one that turns out bigger
    than ``prefixing.MAX_BODY`` (no length was announced) is passed on
    unchanged as it arrives.
    """
    if kind == "html":
        headers.popall("Content-Length", None)
        return await _stream(request, upstream, headers, ex, True, page=prefixing.PageRewriter(found.prefix.encode()))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in upstream.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size > prefixing.MAX_BODY:
                return await _stream(request, upstream, headers, ex, True, b"".join(chunks))
    except BROKEN_STREAM as exc:
        ex.fail(UpstreamError.RESET, f"stream broke mid-body: {type(exc).__name__}", 502)
        return error_response(request, 502, "The preview server is not reachable.", "It may have stopped; restart the preview.")
    body = prefixing.rewrite(b"".join(chunks), kind, found.prefix, found.upstream_path)
    headers.popall("Content-Length", None)
    response = web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
    ex.flow.response_headers = response.headers
    ex.flow.bytes_out = len(body)
    return response


def _unreachable_kind(exc: BaseException) -> UpstreamError:
    """Not connected at all, or connected and then dropped."""
    return UpstreamError.CONNECT if isinstance(exc, aiohttp.ClientConnectorError) else UpstreamError.RESET


def _cut(request: web.Request, response: web.StreamResponse, ex: Exchange, exc: BaseException) -> web.StreamResponse:
    """The status line is sent already: the only honest signal left is to cut the connection."""
    ex.fail(UpstreamError.RESET, f"stream broke mid-body: {type(exc).__name__}")
    if request.transport is not None:
        request.transport.close()
    return response


async def _send(request: web.Request, url: URL, headers: CIMultiDict[str], flow: ProxyFlow) -> aiohttp.ClientResponse:
    """Send the request upstream and wait for its response head.

    The first-byte clock (EDGE_FIRST_BYTE_TIMEOUT) runs from the end of the
    request body, so a slow upload is not cut; once the head has arrived
    nothing times out, so long streams (SSE, downloads) live as long as they flow.
    """
    client = request.app[keys.CLIENT]
    timeout = request.app[keys.SETTINGS].first_byte_timeout
    if not request.body_exists:
        async with asyncio.timeout(timeout):
            return await client.request(request.method, url, headers=headers, allow_redirects=False, auto_decompress=False)

    loop = asyncio.get_running_loop()
    waiting = True
    async with asyncio.timeout(None) as clock:

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_any():
                flow.bytes_in += len(chunk)
                yield chunk
            if waiting:  # the upstream may answer before it has read the whole body
                clock.reschedule(loop.time() + timeout)

        try:
            return await client.request(
                request.method, url, headers=headers, data=body(), allow_redirects=False, auto_decompress=False
            )
        finally:
            waiting = False


def setup(app: web.Application) -> None:
    """The session proxy as the app's catch-all route; its exchanges' tally folded into the metrics."""
    exchanges = exchange.setup(app)
    exchanges.sink = lambda tally: metrics.add_tally(app, tally)
    metrics.before_scrape(app, exchanges.fold)
    app.cleanup_ctx.append(exchanges.folding)
    websocket.setup(app)
    app.router.add_route("*", "/{tail:.*}", handle)
