"""The session table API: a thread's status, the list of sessions, ending a session.

* ``GET /api/status/<clientId>/<userId>/<threadId>``: workspace, git status, preview status.
* ``GET /api/sessions[?clientId=...&inactiveSince=<ISO-8601 or epoch seconds>]``.
* ``GET /api/sessions/<sessionId>``.
* ``DELETE /api/sessions/<sessionId>[?purge=1]``: stop the preview, close its
  sockets, drop its route and registry entry; ``purge`` also removes the
  worktree (``git worktree remove --force``; the branch stays in the clone).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

from aiohttp import web

from control import gitops
from control.services import SESSION_SERVICE
from control.sessions import REGISTRY
from control.workspaces import WORKSPACES
from core.errors import Invalid, NotFound
from core.ids import ThreadRef, check_id, check_thread_id, is_session_id
from preview.appkeys import PREVIEWS


def parse_since(raw: str) -> float:
    """Epoch seconds from ``1700000000``/``1700000000.5`` or ISO-8601 (no zone: UTC)."""
    try:
        value = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise Invalid("inactiveSince must be ISO-8601 (2025-01-31T12:00:00Z) or epoch seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if not math.isfinite(value):
        raise Invalid("inactiveSince must be a finite number of epoch seconds")
    return value


def _purge_flag(request: web.Request) -> bool:
    raw = request.query.get("purge", "0").strip().lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no", ""):
        return False
    raise Invalid("purge must be 1 or 0")


async def thread_status(request: web.Request) -> web.Response:
    """``GET /api/status/<c>/<u>/<t>``: the thread's workspace, git status and preview."""
    info = request.match_info
    c = check_id("clientId", info["client_id"])
    u = check_id("userId", info["user_id"])
    t = check_thread_id(info["thread_id"])
    sessions, registry, ws = request.app[SESSION_SERVICE], request.app[REGISTRY], request.app[WORKSPACES]
    thread = ThreadRef(c, u, t)
    sid = registry.session_id_of(thread)
    git = await gitops.status(ws, thread)  # 404 (or 409 while initialising) for an unknown thread
    session = registry.get(sid)
    view = sessions.view(session).as_json() if session is not None else {"sessionId": sid, "status": "ready"}
    previews = request.app.get(PREVIEWS)
    return web.json_response(
        {
            "success": True,
            **view,
            "clientId": c,
            "userId": u,
            "threadId": t,
            "workspace": {"path": str(ws.thread_path(thread)), "branch": git.branch},
            "git": git.as_json(),
            "preview": previews.status(sid) if previews is not None else {"state": "stopped"},
        }
    )


async def list_sessions(request: web.Request) -> web.Response:
    sessions, registry = request.app[SESSION_SERVICE], request.app[REGISTRY]
    client = request.query.get("clientId")
    if client is not None:
        check_id("clientId", client)
    since_raw = request.query.get("inactiveSince")
    since = parse_since(since_raw) if since_raw is not None else None
    views = []
    for session in sorted(registry.all(), key=lambda s: s.created):
        if client is not None and session.client_id != client:
            continue
        if since is not None and sessions.last_activity(session) >= since:
            continue
        views.append(sessions.view(session).as_json())
    return web.json_response({"success": True, "count": len(views), "sessions": views})


def _session_id(request: web.Request) -> str:
    sid = request.match_info["session_id"]
    if not is_session_id(sid):
        raise Invalid(f"invalid session id {sid[:80]!r}")
    return sid


async def get_session(request: web.Request) -> web.Response:
    session = request.app[REGISTRY].get(_session_id(request))
    if session is None:
        raise NotFound(f"no session {request.match_info['session_id']!r}")
    return web.json_response({"success": True, **request.app[SESSION_SERVICE].view(session).as_json()})


async def delete_session(request: web.Request) -> web.Response:
    """Stop and forget a session; with ``?purge=1`` also remove its worktree."""
    sid = _session_id(request)
    purge = _purge_flag(request)
    sessions = request.app[SESSION_SERVICE]
    if not sessions.known(sid):
        raise NotFound(f"no session {sid!r}")
    ended = await request.app[WORKSPACES].run_detached(sessions.end(sid, purge))
    return web.json_response(ended.as_json())


def setup(app: web.Application) -> None:
    """Add the session routes (before the proxy catch-all)."""
    app.router.add_get("/api/status/{client_id}/{user_id}/{thread_id}", thread_status)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session_id}", get_session)
    app.router.add_delete("/api/sessions/{session_id}", delete_session)
