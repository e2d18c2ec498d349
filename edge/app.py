"""The application factory: one aiohttp app fronting previews, the control API and operations."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from control import api as control_api
from control import claude_api, dynamo, status_api
from control import errors as control_errors
from control.previews import RegistryLocator
from control.runs import RUNNER
from control.sessions import REGISTRY
from control.threads import THREADS
from control.workspaces import WORKSPACES
from core.errors import error_middleware
from edge import apilog, auth, fastpath, health, idle, keys, metrics, operator, previews, proxy, routes_api, startpage, stopping, tracking, workers
from edge.classify import DECISION, Refusal, classify
from edge.errors import error_response
from edge.framing import reject_ambiguous_framing
from edge.headers import make_peer
from edge.hostpolicy import HostPolicy
from edge.proxylog import JsonLines, ProxyLog
from edge.routing import Match, MatchKind, Route, SessionTable
from edge.settings import Settings
from edge.upstream import upstream_client
from edge.websocket import SOCKETS, SocketRegistry, is_upgrade
from preview import supervisor_ctx as preview_ctx

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
    """The client the proxy forwards HTTP requests with (kept-alive connections to dev servers)."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
    async with upstream_client(app[keys.SETTINGS].connect_timeout, connector) as client:
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


def client_origin(request: web.Request) -> str:
    """The origin the client used: its own, or a trusted proxy's ``X-Forwarded-Host``/``-Proto`` (control's previewUrls)."""
    peer = make_peer(request.remote, request.headers, request.scheme, request.app[keys.SETTINGS].trusted_proxies)
    return f"{peer.scheme}://{peer.host}"


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


def _check_lifecycle_order(app: web.Application) -> None:
    """The clean-up order the edge depends on, checked rather than only described (clean-up runs in reverse)."""
    contexts = list(app.cleanup_ctx)
    if contexts[-1] is not stopping.drain_ctx:
        raise RuntimeError("the drain of running work must be the last cleanup context (it must run first)")
    if contexts.index(tracking.tracker_ctx) > contexts.index(preview_ctx):
        raise RuntimeError("the session tracker must be set up before the previews (its last write follows their stop)")


def create_app(settings: Settings | None = None, *, proxy_log: ProxyLog | None = None) -> web.Application:
    """Build the edge: the one place where every service is created and wired, in this order.

    1. the proxy core: settings, session table, host policy, logs, sockets, the upstream client;
    2. stopping: its ``on_shutdown`` hook first (the drain budget's clock starts before anything else);
    3. the control plane: workspaces, registry, Claude runs, then the session tracker that sees them live;
    4. previews, routed through the session table;
    5. operations: metrics, the operator page, worker processes;
    6. the drain of running work, the last cleanup context: clean-up runs in reverse, so running
       work ends before previews stop, and the tracker writes the last activity after them;
    7. the edge's own pages, then the session proxy as the catch-all route.
    """
    settings = settings or Settings.from_env()
    # Metrics first (refusals count too); the token check after the host policy (session hosts are all preview).
    # The domain errors' answers last: inside the API log and the metrics, as each handler's own answer.
    middlewares = [
        metrics.count_requests, apilog.log_api, reject_ambiguous_framing, host_policy, auth.require_token,
        error_middleware(control_errors.TRANSLATIONS),
    ]
    app = web.Application(middlewares=middlewares, client_max_size=1024**2)

    # 1. The proxy core.
    app[keys.SETTINGS] = settings
    table = app[keys.SESSIONS] = SessionTable()
    app[keys.HOSTS] = HostPolicy(settings.public_hosts, settings.session_host_patterns)
    app[keys.PROXY_LOG] = proxy_log or proxy_log_for(settings)
    app[keys.STARTED_AT] = time.monotonic()
    app[keys.STOP] = asyncio.Event()
    sockets = app[SOCKETS] = SocketRegistry()
    table.on_remove(sockets.close_session)
    app.cleanup_ctx.extend([_client_ctx, _proxy_log_ctx])

    # 2. Stopping, before any other on_shutdown hook; then the fast path and the sockets' 1001 close.
    stopping.setup(app)
    if settings.fast_path:
        fastpath.setup(app)  # plain GETs to ready previews skip aiohttp (EdgeSite puts it in front)
    app.on_shutdown.append(_close_sockets_on_shutdown)
    health.setup(app)
    routes_api.setup(app)

    # 3. The control plane, given its settings section and how to tell a client's origin.
    control_api.setup(app, settings.control, client_origin)
    claude_api.setup(app)
    stopping.add_drain(app, app[RUNNER].drain)
    stopping.add_drain(app, app[WORKSPACES].drain)
    idle.setup(app)  # the idle watch's middleware and its auto-shutdown
    if settings.dynamodb_table:
        dynamo.setup(app, settings.dynamodb_table, settings.aws_region, settings.ecs_metadata_uri)
    tracker = tracking.setup(app)  # before previews: its clean-up (the last activity) runs after theirs
    app[apilog.SESSION_OF] = tracker.session_of
    status_api.setup(app)

    # 4. Previews: the supervisor publishes routes to the table and starts dev servers on demand.
    previews.setup(app, settings.preview, table, RegistryLocator(app[REGISTRY], settings.workspace_path))
    _alias_hermes_sessions(app)

    # 5. Operations.
    metrics.setup(app)
    operator.setup(app)  # /_edge/: the operator page (edge.auth guards it like the API)
    if settings.workers > 1 and settings.fast_path and settings.flow_log is None:
        workers.setup(app, settings.workers)  # more processes on the port (edge.server starts them)

    # 6. The drain of running work: the last cleanup context, so it runs first.
    stopping.setup_drain(app)

    _check_lifecycle_order(app)

    # 7. The edge's own pages, then the catch-all.
    startpage.setup(app)  # /session/_edge/status/<id>: what the waiting page polls
    proxy.setup(app)  # the session proxy: the catch-all route, and the exchanges every path reports to
    return app
