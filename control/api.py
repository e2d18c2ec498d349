"""HTTP handlers of the workspace and git API (the old container's paths and field names).

Every id is checked before a path is built, every body is a JSON object of
the right types (else 400, too large 413), and every git operation runs to
its end even if the caller disconnects (``Workspaces.run_detached``).
"""

from __future__ import annotations

import functools
from typing import Awaitable, Callable

from aiohttp import web

from control import gitops
from control.errors import ControlError
from control.gitcmd import GitError
from control.repourl import parse_repo_url
from control.sessions import REGISTRY, SessionRegistry
from control.threads import initialise
from control.workspaces import WORKSPACES, Workspaces, failure
from core.ids import InvalidInput, ThreadRef, check_branch, check_id, check_session_name, check_thread_id
from core.jsonbody import read_json_body
from core.jsonfile import read_json_file
from edge import keys
from edge.headers import make_peer

MAX_BODY = 256 * 1024
MAX_MESSAGE = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _api(handler: Handler) -> Handler:
    """Turn the control layer's errors into ``{"success": false, ...}`` answers."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidInput as exc:
            return _fail(ControlError(400, str(exc)))
        except ControlError as exc:
            return _fail(exc)
        except GitError as exc:
            return _fail(failure(exc, f"git {exc.command}"))

    return wrapper


def _fail(error: ControlError) -> web.Response:
    # Built here, not with json_error: extra fields may include "status" (e.g. "cloning").
    return web.json_response({"success": False, "error": error.message, **error.extra}, status=error.status)


def _ok(data: dict, status: int = 200) -> web.Response:
    return web.json_response({"success": True, **data}, status=status)


def _thread(request: web.Request) -> tuple[Workspaces, str, str, str]:
    info = request.match_info
    return (
        request.app[WORKSPACES],
        check_id("clientId", info["client_id"]),
        check_id("userId", info["user_id"]),
        check_thread_id(info["thread_id"]),
    )


def _ids(c: str, u: str, t: str) -> dict:
    return {"clientId": c, "userId": u, "threadId": t}


def _optional(body: dict, name: str, kind: type, default: object = None) -> object:
    value = body.get(name, default)
    if value is not None and not isinstance(value, kind):
        raise InvalidInput(f"{name} must be a {'boolean' if kind is bool else 'string'}")
    return value


def public_origin(request: web.Request) -> str:
    """The origin of the preview links we hand out: EDGE_PUBLIC_URL, else what the client (or a trusted
    proxy's ``X-Forwarded-Host``/``-Proto``) used."""
    settings = request.app[keys.SETTINGS]
    if settings.public_url:
        return settings.public_url
    peer = make_peer(request.remote, request.headers, request.scheme, settings.trusted_proxies)
    return f"{peer.scheme}://{peer.host}"


@_api
async def init(request: web.Request) -> web.Response:
    """``POST /api/init {clientId, userId, threadId, repoUrl, sessionId?}``: clone if needed, create or
    resume the thread (``sessionId``: the caller names the thread's session)."""
    settings = request.app[keys.SETTINGS]
    body = await read_json_body(request, MAX_BODY)
    client_id = check_id("clientId", body.get("clientId", settings.default_client_id))
    user_id = check_id("userId", body.get("userId", settings.default_user_id))
    thread_id = check_thread_id(body.get("threadId"))
    session_id = body.get("sessionId")
    if session_id is not None:
        session_id = check_session_name(session_id)
    raw_url = body.get("repoUrl")
    repo = None if raw_url is None else parse_repo_url(raw_url, settings.git_allowed_hosts, settings.git_allow_local)
    origin = public_origin(request)
    result = await initialise(request.app, ThreadRef(client_id, user_id, thread_id), repo, origin=origin, session_id=session_id)
    session = result.session
    return _ok(
        {
            "sessionId": session.session_id,
            "previewUrl": f"{origin}/session/{session.session_id}/",
            "branch": session.branch,
            "resumed": result.resumed,
            "cloned": result.cloned,
            "workspacePath": session.worktree,
            "repoUrl": session.repo_url,
            **_ids(client_id, user_id, thread_id),
        }
    )


@_api
async def init_status(request: web.Request) -> web.Response:
    """``GET /api/init/<c>/<u>/<t>``: the thread's init status (``cloning`` with git's progress) and context."""
    ws, c, u, t = _thread(request)
    state = ws.state(c, u, t)
    context = read_json_file(ws.context_path(c, u, t))
    if state is None and context is None:
        raise ControlError(404, f"thread {t!r} of {c}/{u} is not initialised")
    context = context or {}
    live = state.as_json() if state is not None else {"status": context.get("status", "ready"), "progress": ""}
    return _ok({**_ids(c, u, t), **context, **live})


@_api
async def git_status(request: web.Request) -> web.Response:
    ws, c, u, t = _thread(request)
    return _ok({**_ids(c, u, t), **await gitops.status(ws, c, u, t)})


@_api
async def git_commit(request: web.Request) -> web.Response:
    ws, c, u, t = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    message = _optional(body, "message", str)
    if message is None:
        message = f"Changes from thread {t}"
    if not message.strip() or "\0" in message or len(message) > MAX_MESSAGE:  # type: ignore[union-attr]
        raise InvalidInput(f"message must be non-empty text of at most {MAX_MESSAGE} characters, without NUL")
    result = await ws.run_detached(gitops.commit(ws, c, u, t, message))  # type: ignore[arg-type]
    return _ok({**_ids(c, u, t), **result})


@_api
async def git_push(request: web.Request) -> web.Response:
    ws, c, u, t = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    force = bool(_optional(body, "force", bool, False))
    return _ok({**_ids(c, u, t), **await ws.run_detached(gitops.push(ws, c, u, t, force))})


@_api
async def git_pull(request: web.Request) -> web.Response:
    ws, c, u, t = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    branch = _optional(body, "branch", str)
    if branch is not None:
        check_branch(branch)
    return _ok({**_ids(c, u, t), **await ws.run_detached(gitops.pull(ws, c, u, t, branch))})  # type: ignore[arg-type]


@_api
async def git_fetch(request: web.Request) -> web.Response:
    ws, c, u, t = _thread(request)
    await read_json_body(request, MAX_BODY)
    return _ok({**_ids(c, u, t), **await ws.run_detached(gitops.fetch(ws, c, u, t))})


@_api
async def git_branch(request: web.Request) -> web.Response:
    ws, c, u, t = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    branch = check_branch(body.get("branch"))
    create = bool(_optional(body, "createNew", bool, False))
    return _ok({**_ids(c, u, t), **await ws.run_detached(gitops.switch_branch(ws, c, u, t, branch, create))})


def setup(app: web.Application) -> None:
    """Create the workspaces and the session registry, and add the routes (before the proxy catch-all)."""
    settings = app[keys.SETTINGS]
    registry = SessionRegistry(settings.workspace_path, settings.session_secret)
    app[REGISTRY] = registry
    app[WORKSPACES] = Workspaces(settings, registry)
    thread = "{client_id}/{user_id}/{thread_id}"
    app.router.add_post("/api/init", init)
    app.router.add_get(f"/api/init/{thread}", init_status)
    app.router.add_get(f"/api/git/{thread}", git_status)
    app.router.add_get(f"/api/git/status/{thread}", git_status)
    app.router.add_post(f"/api/git/commit/{thread}", git_commit)
    app.router.add_post(f"/api/git/push/{thread}", git_push)
    app.router.add_post(f"/api/git/pull/{thread}", git_pull)
    app.router.add_post(f"/api/git/fetch/{thread}", git_fetch)
    app.router.add_post(f"/api/git/branch/{thread}", git_branch)
