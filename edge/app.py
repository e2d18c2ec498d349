"""The application factory: one aiohttp app fronting previews, the control API and operations."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

import preview
from control import api as control_api
from control import claude_api
from control import dynamo, status_api, tracking
from control.previews import RegistryLocator
from control.sessions import REGISTRY
from control.threads import THREADS
from control.workspaces import WORKSPACES
from edge import apilog, auth, fastpath, health, idle, keys, metrics, operator, proxy, routes_api, startpage, stopping, tabs, workers
from edge.errors import error_response
from edge.framing import reject_ambiguous_framing
from edge.classify import DECISION, Refusal, classify
from edge.hostpolicy import HostPolicy
from edge.proxylog import JsonLines, ProxyLog
from edge.routing import Match, MatchKind, Route, SessionTable
from edge.settings import Settings
from edge.websocket import SOCKETS, SocketRegistry, is_upgrade

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def host_policy(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Decide the request once (:func:`edge.classify.classify`): refusals answered here, before anything else runs.

    The edge rewrites ``Host`` for the upstream, so Vite's DNS-rebinding check
    no longer protects the dev server: this is that check, at the edge. A
    session host's every path is the preview's; other decisions are read by
    the handler (:func:`edge.proxy.handle` for the catch-all).
    """
    upgrade = is_upgrade(request)
    decision = request[DECISION] = classify(request.raw_path, request.method, request.headers, request.app[keys.HOSTS], upgrade=upgrade)
    if isinstance(decision, Refusal):
        return error_response(request, decision.status, decision.error, decision.hint)
    if isinstance(decision, Match) and decision.kind is MatchKind.HOST:
        return await proxy.proxy_session(request, decision, upgrade)
    return await handler(request)


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout, sock_connect=settings.connect_timeout)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
    ) as client:
        app[keys.CLIENT] = client
        yield


async def _proxy_log_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    app[keys.PROXY_LOG].close()


async def _close_sockets_on_shutdown(app: web.Application) -> None:
    """Before the server waits for its handlers: open sockets end with 1001, not a dropped connection."""
    await app[SOCKETS].close_all()


def proxy_log_for(settings: Settings) -> ProxyLog:
    addons: list = [JsonLines()]
    if settings.flow_log is not None:
        from edge.flowfile import FlowFile

        addons.append(FlowFile(settings.flow_log))
    return ProxyLog(addons)


def _alias_hermes_sessions(app: web.Application) -> None:
    """A Hermes session not known yet shows the default thread's preview (``control.threads``)."""
    table = app[keys.SESSIONS]
    provide, opener = table.provider, app[THREADS]
    if provide is None:
        return

    async def provide_or_alias(session_id: str) -> Route | None:
        route = await provide(session_id)
        if route is None:
            alias = await opener.preview_alias(session_id)
            if alias is not None:
                route = await provide(alias)
        return route

    table.provider = provide_or_alias


def create_app(settings: Settings | None = None, *, proxy_log: ProxyLog | None = None) -> web.Application:
    """Build the edge: its own routes first, the session proxy as the catch-all."""
    settings = settings or Settings.from_env()
    # Metrics first (refusals count too); the token check after the host policy (session hosts are all preview).
    middlewares = [metrics.count_requests, apilog.log_api, reject_ambiguous_framing, host_policy, auth.require_token]
    app = web.Application(middlewares=middlewares, client_max_size=1024**2)
    app[keys.SETTINGS] = settings
    app[keys.SESSIONS] = SessionTable()
    app[keys.HOSTS] = HostPolicy(settings.public_hosts, settings.session_host_patterns)
    app[keys.PROXY_LOG] = proxy_log or proxy_log_for(settings)
    app[keys.STARTED_AT] = time.monotonic()
    app[keys.STOP] = asyncio.Event()
    app[SOCKETS] = SocketRegistry()
    app[keys.SESSIONS].on_remove(app[SOCKETS].close_session)
    app.cleanup_ctx.extend([_client_ctx, _proxy_log_ctx])
    stopping.setup(app)  # first on_shutdown hook: starts the drain budget's clock
    if settings.fast_path:
        fastpath.setup(app)  # plain GETs to ready previews skip aiohttp (EdgeSite puts it in front)
    app.on_shutdown.append(_close_sockets_on_shutdown)

    health.setup(app)
    routes_api.setup(app)
    control_api.setup(app)
    claude_api.setup(app)
    # Sessions: idle watch, DynamoDB, tracker, /api/sessions (before preview.setup: cleaned up after it).
    idle.setup(app)
    if settings.dynamodb_table:
        dynamo.setup(app, settings.dynamodb_table, settings.aws_region, settings.ecs_metadata_uri)
    app[apilog.SESSION_OF] = tracking.setup(app).session_of
    status_api.setup(app)
    preview.setup(app, RegistryLocator(app[REGISTRY], settings.workspace_path))
    _alias_hermes_sessions(app)
    metrics.setup(app)
    operator.setup(app)  # /_edge/: the operator page (edge.auth guards it like the API)
    stopping.add_drain(app, app[WORKSPACES].drain)
    if settings.workers > 1 and settings.fast_path and settings.flow_log is None:
        workers.setup(app, settings.workers)  # more processes on the port (edge.server starts them)
    stopping.setup_drain(app)  # last cleanup_ctx: running work ends before dev servers stop
    startpage.setup(app)  # /session/_edge/status/<id>: what the waiting page polls
    tabs.setup(app)  # the tab worker that keeps each browser tab on its own session (prefix mode)
    proxy.setup(app)  # the session proxy: the catch-all route, and the exchanges every path reports to
    return app
