"""Astro dev-server supervisor: one preview per conversation thread.

``setup(app, locator)`` gives the edge on-demand previews: the supervisor
becomes the session table's route provider (a request for a stopped thread
starts its dev server), the ``/api/astro/...`` routes are added, ``/health``
counts previews by state, and every dev server stops when the app stops. The
locator says which session a thread has and which folder a session shows.
"""

from __future__ import annotations

from typing import AsyncIterator

from aiohttp import web

from core.ids import ThreadRef
from edge import keys
from edge.health import HEALTH_FIELDS
from preview import api
from preview.appkeys import PREVIEWS
from preview.locator import Locator, thread_folder
from preview.supervisor import PreviewState, PreviewSupervisor

__all__ = [
    "PREVIEWS",
    "Locator",
    "PreviewState",
    "PreviewSupervisor",
    "ThreadRef",
    "setup",
    "thread_folder",
]


async def _supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    supervisor = app[PREVIEWS]
    await supervisor.open()
    try:
        yield
    finally:
        await supervisor.close()


def setup(app: web.Application, locator: Locator) -> PreviewSupervisor:
    """Wire previews into an edge app (before the proxy catch-all route is added)."""
    supervisor = PreviewSupervisor(app[keys.SETTINGS], app[keys.SESSIONS], locator)
    app[PREVIEWS] = supervisor
    app[keys.SESSIONS].provider = supervisor.provide
    app.cleanup_ctx.append(_supervisor_ctx)
    fields = app.setdefault(HEALTH_FIELDS, {})
    fields["previewsRunning"] = supervisor.running  # dev servers, never routes added through the API
    fields["previews"] = supervisor.counts
    api.setup(app)
    return supervisor
