"""The routes API, in the manner of configurable-http-proxy.

Lets an operator or Hermes point a session at an upstream the edge did not
start. Targets are limited to ``EDGE_UPSTREAM_NETWORKS`` so this API cannot
be used to reach arbitrary hosts.
"""

from __future__ import annotations

from aiohttp import web

from core.ids import is_session_id
from core.jsonbody import json_error, read_json_body
from edge import keys
from edge.routing import Route, RouteError, parse_target


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["session_id"]
    if not is_session_id(session_id):
        raise json_error(400, f"invalid session id {session_id!r}")
    return session_id


async def list_routes(request: web.Request) -> web.Response:
    table = request.app[keys.SESSIONS]
    return web.json_response({"success": True, "routes": {sid: r.as_json() for sid, r in table.routes.items()}})


async def get_route(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    route = request.app[keys.SESSIONS].get(session_id)
    if route is None:
        raise json_error(404, f"no route for session {session_id!r}")
    return web.json_response({"success": True, **route.as_json()})


async def put_route(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    body = await read_json_body(request)
    try:
        target = parse_target(body.get("target"), request.app[keys.SETTINGS].upstream_networks)
    except RouteError as exc:
        raise json_error(400, str(exc)) from None
    table = request.app[keys.SESSIONS]
    existed = table.get(session_id) is not None
    route = Route(session_id, target, source="api")
    table.set(route)
    return web.json_response({"success": True, **route.as_json()}, status=200 if existed else 201)


async def delete_route(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    if not await request.app[keys.SESSIONS].remove(session_id):
        raise json_error(404, f"no route for session {session_id!r}")
    return web.Response(status=204)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/routes", list_routes)
    app.router.add_get("/api/routes/{session_id}", get_route)
    app.router.add_post("/api/routes/{session_id}", put_route)
    app.router.add_delete("/api/routes/{session_id}", delete_route)
