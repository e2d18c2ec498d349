"""Running the edge: the listening socket and the server's own limits.

:func:`start_edge` is the one way the edge is started, by ``edge serve`` and
by the tests alike, so the tests exercise the production limits:

* ``handler_cancellation``: a client that goes away cancels its handler, and
  so its upstream request (a slow page, a stream) instead of letting it run on.
* the request-head deadline and the connection cap of :mod:`edge.limits`.
* ``keepalive_timeout``: idle kept-alive connections are closed, later than a
  load balancer's idle timeout (ALB: 60 s) so it never reuses a closing one.
* ``shutdown_timeout``: on SIGTERM or SIGINT, requests in flight get ``EDGE_DRAIN_SECONDS``
  to finish; running work shares that budget (:mod:`edge.stopping` has the order of the steps).
* no open API beyond loopback: without ``EDGE_API_TOKEN`` the edge listens only on
  loopback unless ``EDGE_ALLOW_NO_AUTH=1`` (:func:`edge.auth.exposure_problem`).

:func:`serve` bounds the whole stop: a second signal, or a stop that runs
``STOP_MARGIN`` seconds past the budget, ends the process at once after
killing the dev servers' process groups (within ECS's 30 s stop timeout by default).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass

from aiohttp import web

from edge import eventloop, keys
from edge.app import create_app
from edge.auth import exposure_problem, is_loopback
from edge.connguard import ConnectionGuard
from edge.fastpath import FAST_PATH
from edge.limits import EdgeSite
from edge.proxylog import ProxyLog
from edge.settings import Settings, SettingsError
from edge.stopping import STOPPING
from edge.workers import WORKERS
from preview.appkeys import PREVIEWS

log = logging.getLogger(__name__)

# How long past EDGE_DRAIN_SECONDS stopping may take (dev servers' SIGTERM grace, flushing state).
STOP_MARGIN = 15.0


@dataclass(frozen=True)
class RunningEdge:
    """A started edge; ``await runner.cleanup()`` stops it."""

    runner: web.AppRunner
    site: EdgeSite

    @property
    def port(self) -> int:
        return self.site.port


async def start_edge(settings: Settings, *, proxy_log: ProxyLog | None = None) -> RunningEdge:
    """Build the app and listen on ``settings.host:settings.port`` (0: any free port) with all limits.

    Raises SettingsError rather than serve an unauthenticated API beyond loopback.
    """
    problem = exposure_problem(settings)
    if problem is not None:
        raise SettingsError(problem)
    app = create_app(settings, proxy_log=proxy_log)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=settings.drain_seconds)
    await runner.setup()
    app[STOPPING].server = runner.server
    guard = ConnectionGuard.from_settings(settings)
    site = EdgeSite(
        runner,
        settings.host,
        settings.port,
        guard,
        fast_path=app.get(FAST_PATH),
        reuse_port=WORKERS in app,
        keepalive_timeout=settings.keepalive_timeout,
        access_log=None,
    )
    try:
        await site.start()
        pool = app.get(WORKERS)
        if pool is not None:
            await pool.start(settings.host, site.port, site.adopt)
    except BaseException:
        await runner.cleanup()
        raise
    return RunningEdge(runner, site)


PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def make_undumpable() -> bool:
    """Keep processes of the same uid (the dev servers run the user's code) out of this one.

    A non-dumpable process's ``/proc/<pid>/environ``, ``mem`` and ``maps`` are
    readable by root only and it cannot be ptrace-attached, so a preview cannot
    read the edge's secrets (``EDGE_API_TOKEN``, ``GITHUB_TOKEN``) there. The
    dev servers are not affected: ``execve`` makes a child dumpable again.
    False where prctl is not available (not Linux).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


async def serve(settings: Settings, *, proxy_log: ProxyLog | None = None) -> None:
    """Serve until SIGTERM, SIGINT or ``keys.STOP`` (idle auto-shutdown), then stop in order.

    A second signal while stopping exits at once (128 + the signal's number).
    """
    if not make_undumpable():
        log.warning("could not make the edge process non-dumpable (prctl): same-uid processes may read its environment")
    edge = await start_edge(settings, proxy_log=proxy_log)
    # Everything made while starting lives as long as the process: keep it out
    # of the garbage collector's full passes, which otherwise walk it again and again.
    gc.freeze()
    app = edge.runner.app
    stop = app[keys.STOP]  # signals and idle auto-shutdown (edge.idle) share one stop path
    loop = asyncio.get_running_loop()
    signalled = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signalled
        if signalled:
            exit_now(app, f"second {sig.name} while stopping", 128 + sig)
        signalled = True
        log.info("%s received: stopping (up to %gs to drain; send it again to stop at once)", sig.name, settings.drain_seconds)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log.info("edge listening on %s (workspace %s, event loop %s)", edge.site.name, settings.workspace_path, eventloop.running_loop())
    if settings.api_token is None and not is_loopback(settings.host):
        log.warning("EDGE_ALLOW_NO_AUTH=1: the API on %s answers anyone without a token", edge.site.name)
    watchdog: asyncio.TimerHandle | None = None
    try:
        await stop.wait()
        log.info("edge stopping")
        limit = settings.drain_seconds + STOP_MARGIN
        watchdog = loop.call_later(limit, exit_now, app, f"stopping took more than {limit:g}s", 1)
    finally:
        await edge.runner.cleanup()
        if watchdog is not None:
            watchdog.cancel()
    log.info("edge stopped")


def exit_now(app: web.Application, why: str, code: int) -> None:
    """End the process at once: SIGKILL the dev servers' process groups first (nothing outlives the edge)."""
    log.error("%s: exiting now (exit status %d)", why, code)
    pool = app.get(WORKERS)
    if pool is not None:
        pool.kill_now()
    supervisor = app.get(PREVIEWS)
    if supervisor is not None:
        for preview in list(supervisor.previews.values()):
            if preview.process is not None:
                preview.process.kill_now()
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(settings: Settings) -> None:
    """Serve on the event loop ``EDGE_EVENT_LOOP`` names (:mod:`edge.eventloop`)."""
    eventloop.run(serve(settings), settings.event_loop)
