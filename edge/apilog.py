"""One JSON line per control-API request, so an operator sees every call and its outcome.

``{"type":"api","method":"POST","path":"/api/claude/<id>/execute","status":404,
"caller":"10.0.3.7","session":"<id>","durationMs":12,"error":"Session not found: ..."}``
goes to stdout beside the proxy's lines (CloudWatch). The caller is the
address after trusted proxies (``edge.auth.caller_address``); queries are
redacted like the proxy's; the error is the answer's own ``error`` field.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Awaitable, Callable

from aiohttp import web

from edge import keys
from edge.auth import caller_address, is_api_path
from edge.redact import redact_query

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ERROR_MAX = 300
SessionOf = Callable[[web.Request], "str | None"]
SESSION_OF = web.AppKey("edge_api_session_of", SessionOf)


def _error(response: web.StreamResponse) -> str | None:
    """The ``error`` of a JSON failure answer, if any."""
    if response.status < 400 or not isinstance(response, web.Response) or response.content_type != "application/json":
        return None
    body = response.body
    if not isinstance(body, (bytes, bytearray)) or len(body) > 64 * 1024:
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return str(error)[:ERROR_MAX] if error else None


def _session(request: web.Request) -> str | None:
    session = request.match_info.get("session_id")
    if session is None:
        session_of = request.app.get(SESSION_OF)
        session = session_of(request) if session_of is not None else None
    return session


@web.middleware
async def log_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log each ``/api/`` request once it is answered (also refusals: 400, 401, 404, 421, ...)."""
    if not is_api_path(request.path) or request.path == "/api/health":
        return await handler(request)
    started = time.monotonic()
    status, error = 500, "internal error"
    try:
        response = await handler(request)
        status, error = response.status, _error(response)
        return response
    except web.HTTPException as exc:
        status, error = exc.status, exc.reason
        raise
    except asyncio.CancelledError:
        status, error = 499, "the client went away"
        raise
    finally:
        record = {
            "time": round(time.time(), 3),
            "method": request.method,
            "path": redact_query(request.raw_path),
            "status": status,
            "caller": caller_address(request, request.app[keys.SETTINGS]),
            "session": _session(request),
            "durationMs": int((time.monotonic() - started) * 1000),
        }
        if error:
            record["error"] = error
        request.app[keys.PROXY_LOG].event("api", record)
