"""Point a session of a running edge at an upstream: in-process, or through the routes API.

In-process is what the preview supervisor does; the API is what an operator
does. A test uses the API when the route's way in is part of what it checks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

from edge import keys
from edge.routing import Route


class HasApp(Protocol):
    """A running edge as the fixtures hand it out (``RunningServer``, ``AppRunner``)."""

    @property
    def app(self) -> web.Application: ...


def add_route(edge: HasApp | web.Application, session_id: str, origin: str, **fields: Any) -> None:
    """Set a ready route for ``session_id`` in the edge's session table (``fields``: other Route fields)."""
    app = edge if isinstance(edge, web.Application) else edge.app
    app[keys.SESSIONS].set(Route(session_id, URL(origin), **fields))


async def post_route(
    edge_origin: str,
    session_id: str,
    target: str,
    *,
    token: str | None = None,
    client: aiohttp.ClientSession | None = None,
) -> None:
    """Create a route through ``POST /api/routes/<session>`` and assert it was created (201)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() if client is None else contextlib.nullcontext(client) as session:
        async with session.post(f"{edge_origin}/api/routes/{session_id}", json={"target": target}, headers=headers) as resp:
            assert resp.status == 201, await resp.text()

