"""Stopping the edge in order, within one budget (``EDGE_DRAIN_SECONDS``).

When the server stops (``runner.cleanup()``, after SIGTERM or SIGINT):

1. the listening socket closes; idle connections close;
2. ``on_shutdown``: :func:`mark_stopping` starts the budget's clock, then the
   open WebSockets get a 1001 close;
3. requests in flight finish; at the budget's end the connections still busy
   are closed, which cancels their handlers (``handler_cancellation``). aiohttp
   itself would wait the budget twice for a handler that does not read the
   request body, as a proxied stream does;
4. cleanup, last registered first: :func:`drain_ctx` (added last by
   ``create_app``) waits for running work (git operations, executions) for
   what is left of the budget, then cancels what still runs; then the other
   modules' clean-ups: dev servers stop, state is flushed, the upstream client closes.

Work that outlives its request (``Workspaces.run_detached``, executors)
registers its ``drain(timeout)`` with :func:`add_drain`, so step 4 waits
for all of it at once, before the dev servers stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.web_server import Server

from edge import keys

log = logging.getLogger(__name__)

Drain = Callable[[float], Awaitable[None]]


class Stopping:
    """When the edge began to stop, and what must finish before it does."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.deadline: float | None = None  # loop time by which running work must be done
        self.drains: list[Drain] = []
        self.server: Server | None = None  # set by start_edge: whose connections to cut at the deadline
        self._cut: asyncio.TimerHandle | None = None

    def remaining(self) -> float:
        """Seconds left of the budget (all of it when stopping has not been marked)."""
        if self.deadline is None:
            return self.budget
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


STOPPING = web.AppKey("stopping", Stopping)


def add_drain(app: web.Application, drain: Drain) -> None:
    """Have the edge wait for ``drain(timeout)`` as it stops (it must cancel what is left at ``timeout``)."""
    app[STOPPING].drains.append(drain)


async def mark_stopping(app: web.Application) -> None:
    stopping = app[STOPPING]
    if stopping.deadline is not None:
        return
    loop = asyncio.get_running_loop()
    stopping.deadline = loop.time() + stopping.budget
    if stopping.server is not None:
        stopping._cut = loop.call_at(stopping.deadline, _cut_connections, stopping.server)


def _cut_connections(server: Server) -> None:
    """The budget is spent: close the connections still busy (their handlers are cancelled)."""
    connections = server.connections
    if connections:
        log.warning("%d request(s) still running after EDGE_DRAIN_SECONDS: closing their connections", len(connections))
    for connection in connections:
        connection.force_close()


async def drain_ctx(app: web.Application) -> AsyncIterator[None]:
    """At clean-up: wait for running work (what is left of the budget), then cancel what still runs."""
    yield
    stopping = app[STOPPING]
    if stopping._cut is not None:  # requests are done: only running work is left
        stopping._cut.cancel()
    if not stopping.drains:
        return
    budget = stopping.remaining()
    results = await asyncio.gather(*(drain(budget) for drain in stopping.drains), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            log.error("draining running work failed", exc_info=result)


def setup(app: web.Application) -> None:
    """Before any other ``on_shutdown`` hook is added."""
    app[STOPPING] = Stopping(app[keys.SETTINGS].drain_seconds)
    app.on_shutdown.append(mark_stopping)


def setup_drain(app: web.Application) -> None:
    """After every other ``cleanup_ctx`` is added, so running work ends before dev servers stop."""
    app.cleanup_ctx.append(drain_ctx)
