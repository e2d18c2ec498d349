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
from control.api import _api
from control.errors import ControlError
from control.tracking import TRACKER, SessionTracker
from control.workspaces import Workspaces
from core.ids import InvalidInput, check_id, check_thread_id, is_session_id
from edge import keys
from preview.appkeys import PREVIEWS


def parse_since(raw: str) -> float:
    """Epoch seconds from ``1700000000``/``1700000000.5`` or ISO-8601 (no zone: UTC)."""
    try:
        value = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise InvalidInput("inactiveSince must be ISO-8601 (2025-01-31T12:00:00Z) or epoch seconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if not math.isfinite(value):
        raise InvalidInput("inactiveSince must be a finite number of epoch seconds")
    return value


def _purge_flag(request: web.Request) -> bool:
    raw = request.query.get("purge", "0").strip().lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no", ""):
        return False
    raise InvalidInput("purge must be 1 or 0")


@_api
async def thread_status(request: web.Request) -> web.Response:
    """``GET /api/status/<c>/<u>/<t>``: the thread's workspace, git status and preview."""
    info = request.match_info
    c = check_id("clientId", info["client_id"])
    u = check_id("userId", info["user_id"])
    t = check_thread_id(info["thread_id"])
    tracker = request.app[TRACKER]
    ws = tracker.workspaces
    sid = tracker.registry.session_id_of(c, u, t)
    git = await gitops.status(ws, c, u, t)  # 404 (or 409 while initialising) for an unknown thread
    session = tracker.registry.get(sid)
    view = tracker.view(session) if session is not None else {"sessionId": sid, "status": "ready"}
    previews = request.app.get(PREVIEWS)
    return web.json_response(
        {
            "success": True,
            **view,
            "clientId": c,
            "userId": u,
            "threadId": t,
            "workspace": {"path": str(ws.thread_path(c, u, t)), "branch": git.get("branch")},
            "git": git,
            "preview": previews.status(sid) if previews is not None else {"state": "stopped"},
        }
    )


@_api
async def list_sessions(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    client = request.query.get("clientId")
    if client is not None:
        check_id("clientId", client)
    since_raw = request.query.get("inactiveSince")
    since = parse_since(since_raw) if since_raw is not None else None
    sessions = []
    for session in sorted(tracker.registry.all(), key=lambda s: s.created):
        if client is not None and session.client_id != client:
            continue
        if since is not None and tracker.last_activity(session) >= since:
            continue
        sessions.append(tracker.view(session))
    return web.json_response({"success": True, "count": len(sessions), "sessions": sessions})


def _session_id(request: web.Request) -> str:
    sid = request.match_info["session_id"]
    if not is_session_id(sid):
        raise InvalidInput(f"invalid session id {sid[:80]!r}")
    return sid


@_api
async def get_session(request: web.Request) -> web.Response:
    tracker = request.app[TRACKER]
    session = tracker.registry.get(_session_id(request))
    if session is None:
        raise ControlError(404, f"no session {request.match_info['session_id']!r}")
    return web.json_response({"success": True, **tracker.view(session)})


@_api
async def delete_session(request: web.Request) -> web.Response:
    """Stop and forget a session; with ``?purge=1`` also remove its worktree."""
    sid = _session_id(request)
    purge = _purge_flag(request)
    tracker = request.app[TRACKER]
    session = tracker.registry.get(sid)
    previews = request.app.get(PREVIEWS)
    table = request.app[keys.SESSIONS]
    if session is None and table.get(sid) is None and (previews is None or previews.get(sid) is None):
        raise ControlError(404, f"no session {sid!r}")
    ws = tracker.workspaces
    return web.json_response(await ws.run_detached(_delete(tracker, sid, purge)))


async def _delete(tracker: SessionTracker, sid: str, purge: bool) -> dict:
    app = tracker.app
    previews = app.get(PREVIEWS)
    stopped = False
    if previews is not None:
        stopped = await previews.stop(sid, "session deleted through the API")
        preview = previews.previews.pop(sid, None)  # no restart on demand from its old folder
        if preview is not None:
            preview.log.close()
    await app[keys.SESSIONS].remove(sid)  # closes the session's WebSockets
    app[keys.SESSIONS].last_activity.pop(sid, None)
    tracker.idle.session_activity.pop(sid, None)
    session = tracker.registry.get(sid)
    purged = False
    if session is not None and purge:
        purged = await _remove_worktree(tracker.workspaces, session.client_id, session.user_id, session.thread_id)
    tracker.registry.remove(sid)
    return {"success": True, "sessionId": sid, "previewStopped": stopped, "purged": purged}


async def _remove_worktree(ws: Workspaces, c: str, u: str, t: str) -> bool:
    """``git worktree remove --force`` of the thread's worktree (the path comes from the ids, not the file)."""
    worktree = ws.thread_path(c, u, t)
    project = ws.project_dir(c, u)
    async with ws.thread_lock(c, u, t):
        async with ws.user_lock(c, u):
            if not (project / ".git").is_dir() or not worktree.exists():
                return False
            await ws.git.run(["worktree", "remove", "--force", str(worktree)], cwd=project)
            await ws.git.run(["worktree", "prune"], cwd=project)
    return True


def setup(app: web.Application) -> None:
    """Add the session routes (before the proxy catch-all)."""
    app.router.add_get("/api/status/{client_id}/{user_id}/{thread_id}", thread_status)
    app.router.add_get("/api/sessions", list_sessions)
    app.router.add_get("/api/sessions/{session_id}", get_session)
    app.router.add_delete("/api/sessions/{session_id}", delete_session)
