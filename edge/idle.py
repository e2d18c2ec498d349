"""Idle auto-shutdown: an edge nobody uses stops itself, so Fargate stops the task.

Activity is any request other than health checks (API calls, proxied
responses: ``SessionTable.last_activity``), and any running work: requests
in flight, and whatever registered a busy check (open WebSockets, git
operations, preview installs, Claude runs). After AUTO_SHUTDOWN_MINUTES
without activity (0: never) the ``before_stop`` hooks run (sessions are
marked ``idle``), then ``keys.STOP`` is set: ``serve`` stops exactly as on
SIGTERM, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from edge import keys
from edge import reserved
from edge.classify import DECISION
from edge.routing import Match

log = logging.getLogger(__name__)

# Probes and scrapes must not keep an unused edge alive.
NOT_ACTIVITY = reserved.paths(activity=False)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BusyCheck = Callable[[], bool]
SessionOf = Callable[[web.Request], "str | None"]


class IdleWatch:
    """When the edge was last used, and whether work is running now."""

    def __init__(self) -> None:
        self.last_request = time.monotonic()
        self.in_flight = 0
        self.busy_checks: dict[str, BusyCheck] = {}
        self.before_stop: list[Callable[[], Awaitable[None]]] = []
        # API activity per session (monotonic), next to SessionTable.last_activity for proxied traffic.
        self.session_activity: dict[str, float] = {}
        self.session_of: SessionOf | None = None

    def note_proxied(self) -> None:
        """A proxied exchange began or ended (the session table records which session)."""
        self.last_request = time.monotonic()

    def note(self, request: web.Request) -> None:
        now = self.last_request = time.monotonic()
        if self.session_of is not None:
            session_id = self.session_of(request)
            if session_id is not None:
                self.session_activity[session_id] = now

    def busy(self) -> list[str]:
        """The names of the busy checks that report running work (plus in-flight requests)."""
        names = [name for name, check in self.busy_checks.items() if _safe(check)]
        return (["requests"] if self.in_flight else []) + names

    def last_activity(self, table_activity: dict[str, float]) -> float:
        return max(self.last_request, max(table_activity.values(), default=0.0))


def _safe(check: BusyCheck) -> bool:
    try:
        return bool(check())
    except Exception:
        log.exception("busy check failed; counting it as busy")
        return True


IDLE = web.AppKey("idle_watch", IdleWatch)


@web.middleware
async def track_activity(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests (except probes) as activity, at their start and at their end.

    A request for a session is activity when it arrives; once proxied, its
    exchange (:mod:`edge.exchange`) holds it in flight, as on the fast path.
    """
    if request.path in NOT_ACTIVITY:
        return await handler(request)
    watch = request.app[IDLE]
    watch.note(request)
    if isinstance(request.get(DECISION), Match):
        return await handler(request)
    watch.in_flight += 1
    try:
        return await handler(request)
    finally:
        watch.in_flight -= 1
        watch.note(request)


async def _watch(app: web.Application, minutes: float) -> None:
    watch, table = app[IDLE], app[keys.SESSIONS]
    limit = minutes * 60.0
    period = min(30.0, max(0.1, limit / 10))
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        busy = watch.busy()
        if busy:
            watch.last_request = now
            continue
        idle_for = now - watch.last_activity(table.last_activity)
        if idle_for < limit:
            continue
        log.info("no activity for %.0f s (AUTO_SHUTDOWN_MINUTES=%g): stopping the edge", idle_for, minutes)
        for hook in watch.before_stop:
            try:
                await hook()
            except Exception:
                log.exception("before-stop hook failed")
        app[keys.STOP].set()
        return


async def _watch_ctx(app: web.Application) -> AsyncIterator[None]:
    minutes = app[keys.SETTINGS].auto_shutdown_minutes
    task = asyncio.create_task(_watch(app, minutes), name="idle auto-shutdown") if minutes > 0 else None
    yield
    if task is not None:
        task.cancel()
        await asyncio.wait({task})


def setup(app: web.Application) -> IdleWatch:
    """Track activity (a middleware after those already added) and stop the edge when idle."""
    watch = IdleWatch()
    app[IDLE] = watch
    app.middlewares.append(track_activity)
    app.cleanup_ctx.append(_watch_ctx)
    return watch
