"""The reverse proxy: the one place that turns a client request into an upstream request.

Bodies stream both ways (nothing is buffered whole), ``Content-Encoding``
passes untouched, and every header change is recorded on the flow.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from yarl import URL

from edge import keys
from edge.errors import error_response
from edge.flow import ProxyFlow
from edge.headers import Peer, client_response_headers, make_peer, upstream_request_headers
from edge.hostpolicy import is_session_id, split_host
from edge.routing import (
    SESSION_COOKIE,
    Match,
    MatchKind,
    Redirect,
    Route,
    RouteState,
    cookie_session,
    is_navigation,
    match_prefix,
)
from edge.websocket import is_upgrade, relay_websocket

EDGE_PATHS = ("/api/", "/_edge/")
EDGE_EXACT = ("/api", "/health", "/metrics", "/_edge")
# Hop-by-hop for this proxy: the edge itself already answered `Expect: 100-continue`.
REQUEST_ONLY_DROP = ("Expect",)


def find_session(request: web.Request) -> Match | Redirect | None:
    """Which session a request belongs to (host, then prefix, then cookie)."""
    host = split_host(request.headers.get("Host", "")) or ""
    session = request.app[keys.HOSTS].session_for_host(host)
    if session is not None:
        return Match(session, MatchKind.HOST, request.raw_path, "")
    found = match_prefix(request.raw_path)
    if found is not None:
        return found
    session = cookie_session(request.headers.get("Cookie"))
    if session is None or not is_session_id(session):
        return None
    if is_navigation(request.headers.get("Sec-Fetch-Mode"), request.headers.get("Sec-Fetch-Dest"), request.headers.get("Accept")) and not is_upgrade(request):
        return Redirect(f"/session/{session}{request.raw_path}")
    return Match(session, MatchKind.COOKIE, request.raw_path, "")


async def handle(request: web.Request) -> web.StreamResponse:
    """Catch-all handler: every request that is not one of the edge's own routes."""
    found = find_session(request)
    if isinstance(found, Redirect):
        raise web.HTTPTemporaryRedirect(found.location)
    if found is None:
        if request.path in EDGE_EXACT or request.path.startswith(EDGE_PATHS):
            return error_response(request, 404, f"No such edge route: {request.method} {request.path}")
        return error_response(
            request,
            404,
            "This address belongs to no preview session.",
            "Open a preview at /session/<sessionId>/ (Hermes' reply links to it).",
        )
    if not is_session_id(found.session_id):
        return error_response(request, 404, "Unknown preview session.")
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
    table.touch(found.session_id)
    settings = request.app[keys.SETTINGS]
    peer = make_peer(request.remote, request.headers, request.scheme, settings.trusted_proxies)
    flow = ProxyFlow(
        session_id=found.session_id,
        match=found.kind.value,
        method=request.method,
        raw_path=request.raw_path,
        http_version=f"HTTP/{request.version.major}.{request.version.minor}",
        client_addr=peer.address,
        client_headers=request.headers,
    )
    try:
        if is_upgrade(request):
            return await relay_websocket(request, found, route, peer, flow)
        return await forward_http(request, found, route, peer, flow)
    finally:
        flow.finish()
        table.touch(found.session_id)
        request.app[keys.PROXY_LOG].flow_done(flow)


def _unavailable(request: web.Request, route: Route) -> web.StreamResponse | None:
    if route.state is RouteState.STARTING or (route.state is RouteState.READY and route.target is None):
        return error_response(
            request,
            503,
            "The preview is starting.",
            "This page reloads by itself when it is ready.",
            retry_after=route.retry_after,
            refresh=True,
            extra={"state": route.state.value, "log": route.detail} if route.detail else {"state": route.state.value},
        )
    if route.state is RouteState.FAILED:
        return error_response(
            request,
            502,
            "The preview failed to start.",
            "Fix the error shown below, then restart the preview.",
            extra={"state": route.state.value, "log": route.detail},
        )
    return None


def public_prefix(found: Match) -> str:
    """The prefix stripped from this request (``X-Forwarded-Prefix``); '' in host and cookie mode."""
    return found.prefix


def location_prefix(found: Match) -> str:
    """Where redirects should land: under the session prefix unless the host names the session."""
    return "" if found.kind is MatchKind.HOST else f"/session/{found.session_id}"


async def forward_http(request: web.Request, found: Match, route: Route, peer: Peer, flow: ProxyFlow) -> web.StreamResponse:
    """Forward one HTTP exchange, streaming both bodies."""
    assert route.target is not None
    settings = request.app[keys.SETTINGS]
    client = request.app[keys.CLIENT]
    prefix = public_prefix(found)
    headers = upstream_request_headers(request.headers, route.target, peer, prefix, flow)
    for name in REQUEST_ONLY_DROP:
        if name in headers:
            flow.change("request", "removed", name, headers.pop(name))
    url = URL(str(route.target).rstrip("/") + found.upstream_path, encoded=True)
    flow.upstream_url = str(url)
    flow.upstream_headers = headers
    loop = asyncio.get_running_loop()
    has_body = request.body_exists
    deadline = None if has_body else loop.time() + settings.first_byte_timeout

    try:
        async with asyncio.timeout(deadline) as first_byte:

            async def body() -> AsyncIterator[bytes]:
                async for chunk in request.content.iter_any():
                    flow.bytes_in += len(chunk)
                    yield chunk
                # The first-byte clock starts once the whole request is sent.
                first_byte.reschedule(loop.time() + settings.first_byte_timeout)

            upstream = await client.request(
                request.method,
                url,
                headers=headers,
                data=body() if has_body else None,
                allow_redirects=False,
                auto_decompress=False,
                compress=None,
                chunked=None,
            )
    except TimeoutError:
        flow.error = "upstream timeout"
        flow.status = 504
        return error_response(request, 504, "The preview did not answer in time.", "Try again; if it persists, restart the preview.")
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
        flow.error = f"upstream unreachable: {type(exc).__name__}"
        flow.status = 502
        return error_response(request, 502, "The preview server is not reachable.", "It may have stopped; restart the preview.")

    async with upstream:
        flow.status = upstream.status
        flow.reason = upstream.reason or ""
        flow.upstream_response_headers = upstream.headers
        origin = f"{peer.scheme}://{peer.host}"
        out_headers = client_response_headers(upstream.headers, route.target, location_prefix(found), origin, flow)
        out_headers["X-Edge-Session"] = found.session_id
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=out_headers)
        if found.kind is MatchKind.PREFIX and cookie_session(request.headers.get("Cookie")) != found.session_id:
            response.set_cookie(SESSION_COOKIE, found.session_id, path="/", httponly=True, samesite="Lax")
            flow.change("response", "added", "Set-Cookie", None, f"{SESSION_COOKIE}=…")
        flow.response_headers = response.headers
        await response.prepare(request)
        if request.method != "HEAD" and upstream.status not in (204, 304):
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    flow.bytes_out += len(chunk)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                # Headers are gone already: the only honest signal left is to cut the connection.
                flow.error = f"upstream broke mid-body: {type(exc).__name__}"
                if request.transport is not None:
                    request.transport.close()
                return response
        await response.write_eof()
        return response
