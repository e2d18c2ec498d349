"""Health checks: ``/health`` for operators and load balancers, ``/api/health`` for Hermes."""

from __future__ import annotations

import time

from aiohttp import web

from edge import __version__, keys, reserved
from edge.websocket import SOCKETS

# The probe paths (from edge.reserved): answered for any Host, not counted as activity.
HEALTH_PATHS = reserved.paths(any_host=True)
# Fields other parts add to /health (the preview supervisor: previews by state): name → callable.
HEALTH_FIELDS = web.AppKey("health_fields", dict)


async def health(request: web.Request) -> web.Response:
    app = request.app
    table = app[keys.SESSIONS]
    routes = list(table.routes.values())
    return web.json_response(
        {
            "status": "healthy",
            "version": __version__,
            "uptimeSeconds": round(time.monotonic() - app[keys.STARTED_AT], 1),
            "sessions": len(routes),
            "previewsRunning": 0,  # the preview supervisor's field replaces it: dev servers, not routes
            "websockets": app[SOCKETS].count(),
            **{name: field() for name, field in app.get(HEALTH_FIELDS, {}).items()},
        }
    )


async def api_health(request: web.Request) -> web.Response:
    """The old container's contract: plain ``OK``."""
    return web.Response(text="OK")


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/api/health", api_health)
