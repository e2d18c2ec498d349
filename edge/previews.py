"""How the edge fronts the preview supervisor: its routes in the session table, its counts in ``/health``.

``preview/`` knows nothing of the edge: it publishes routes through
:class:`preview.routes.RouteTable`, which :class:`PreviewRoutes` implements on
the session table, and the supervisor's ``provide`` becomes the table's
provider (a request for a stopped thread starts its dev server).
"""

from __future__ import annotations

from aiohttp import web

import preview
from edge.health import HEALTH_FIELDS
from edge.routing import Route, RouteState, SessionTable
from preview.locator import Locator
from preview.routes import PreviewRoute
from preview.settings import PreviewSettings

SOURCE = "preview"  # Route.source of the routes the supervisor publishes


def as_route(route: PreviewRoute) -> Route:
    """The session table's route for a preview's route."""
    return Route(
        route.session_id,
        route.target,
        RouteState(route.state.value),
        source=SOURCE,
        detail=route.detail,
        retry_after=route.retry_after,
        root=route.root,
    )


class PreviewRoutes:
    """The session table as the supervisor's :class:`preview.routes.RouteTable`."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table

    def publish(self, route: PreviewRoute) -> None:
        self.table.set(as_route(route))

    async def withdraw(self, session_id: str) -> None:
        route = self.table.get(session_id)
        if route is not None and route.source == SOURCE:
            await self.table.remove(session_id)

    def last_activity(self, session_id: str) -> float:
        return self.table.last_activity.get(session_id, 0.0)


def setup(app: web.Application, settings: PreviewSettings, table: SessionTable, locator: Locator) -> preview.PreviewSupervisor:
    """Add the supervisor; it starts previews for requests the table has no ready route for."""
    supervisor = preview.setup(app, settings, PreviewRoutes(table), locator)

    async def provide(session_id: str) -> Route | None:
        route = await supervisor.provide(session_id)
        return as_route(route) if route is not None else None

    table.provider = provide
    fields = app.setdefault(HEALTH_FIELDS, {})
    fields["previewsRunning"] = supervisor.running  # dev servers, never routes added through the API
    fields["previews"] = supervisor.counts
    return supervisor
