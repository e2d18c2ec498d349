"""Astro dev-server supervisor: one preview per conversation thread.

``setup(app, settings, routes, locator)`` adds on-demand previews to an app:
the supervisor publishes each ready dev server's route to ``routes`` (the
edge's session table, through :class:`preview.routes.RouteTable`), the
``/api/astro/...`` routes are added, and every dev server stops when the app
stops. The locator says which session a thread has and which folder a session
shows. The edge makes :meth:`PreviewSupervisor.provide` its table's provider
(a request for a stopped thread starts its dev server).
"""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from core.ids import ThreadRef
from preview import api
from preview.appkeys import PREVIEWS
from preview.locator import Locator, thread_folder
from preview.routes import PreviewRoute, RouteState, RouteTable
from preview.settings import PreviewSettings
from preview.supervisor import PreviewState, PreviewSupervisor

__all__ = [
    "PREVIEWS",
    "Locator",
    "PreviewRoute",
    "PreviewSettings",
    "PreviewState",
    "PreviewSupervisor",
    "RouteState",
    "RouteTable",
    "ThreadRef",
    "setup",
    "thread_folder",
]


async def supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    """The supervisor's lifecycle: it opens with the app; every dev server stops when the app stops."""
    supervisor = app[PREVIEWS]
    await supervisor.open()
    try:
        yield
    finally:
        await supervisor.close()


def setup(app: web.Application, settings: PreviewSettings, routes: RouteTable, locator: Locator) -> PreviewSupervisor:
    """Add previews to an app (before the proxy catch-all route is added); their lifecycle is a cleanup context."""
    supervisor = PreviewSupervisor(settings, routes, locator)
    app[PREVIEWS] = supervisor
    app.cleanup_ctx.append(supervisor_ctx)
    api.setup(app)
    return supervisor
