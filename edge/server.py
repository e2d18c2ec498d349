"""Running the edge: the listening socket and the server's own limits.

:func:`start_edge` is the one way the edge is started, by ``edge serve`` and
by the tests alike, so the tests exercise the production limits:

* ``handler_cancellation``: a client that goes away cancels its handler, and
  so its upstream request (a slow page, a stream) instead of letting it run on.
* the request-head deadline and the connection cap of :mod:`edge.limits`.
* ``keepalive_timeout``: idle kept-alive connections are closed, later than a
  load balancer's idle timeout (ALB: 60 s) so it never reuses a closing one.
* ``shutdown_timeout``: on SIGTERM or SIGINT, requests in flight get ``EDGE_DRAIN_SECONDS``
  to finish (aiohttp then cancels them and waits as long again), within ECS's 30 s stop timeout.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from edge.app import create_app
from edge.limits import ConnectionGuard, EdgeSite
from edge.proxylog import ProxyLog
from edge.settings import Settings

log = logging.getLogger("edge")


@dataclass(frozen=True)
class RunningEdge:
    """A started edge; ``await runner.cleanup()`` stops it."""

    runner: web.AppRunner
    site: EdgeSite
    guard: ConnectionGuard

    @property
    def port(self) -> int:
        return self.site.port


async def start_edge(settings: Settings, *, proxy_log: ProxyLog | None = None) -> RunningEdge:
    """Build the app and listen on ``settings.host:settings.port`` (0: any free port) with all limits."""
    app = create_app(settings, proxy_log=proxy_log)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=settings.drain_seconds)
    await runner.setup()
    guard = ConnectionGuard(settings.max_connections, settings.header_timeout)
    site = EdgeSite(runner, settings.host, settings.port, guard, keepalive_timeout=settings.keepalive_timeout, access_log=None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return RunningEdge(runner, site, guard)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain and stop."""
    edge = await start_edge(settings)
    log.info("edge listening on %s (workspace %s)", edge.site.name, settings.workspace_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("edge stopping")
    finally:
        await edge.runner.cleanup()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
