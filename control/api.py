"""HTTP handlers of the workspace and git API (the old container's paths and field names).

Every id is checked before a path is built, every body is a JSON object of
the right types (else 400, too large 413), and every git operation runs to
its end even if the caller disconnects (``Workspaces.run_detached``).
"""

from __future__ import annotations

from aiohttp import web

from control import gitops
from control.repourl import parse_repo_url
from control.services import CLIENT_ORIGIN, SETTINGS, ClientOrigin
from control.sessions import REGISTRY, SessionRegistry
from control.settings import ControlSettings
from control.threads import initialise
from control.workspaces import WORKSPACES, Workspaces
from core.errors import Invalid, NotFound
from core.ids import ThreadRef, check_branch, check_id, check_session_name, check_thread_id
from core.jsonbody import read_json_body
from core.jsonfile import read_json_file

MAX_BODY = 256 * 1024
MAX_MESSAGE = 64 * 1024


def ok(data: dict, status: int = 200) -> web.Response:
    """A success answer: ``{"success": true, **data}`` (failures are domain errors: ``core.errors``)."""
    return web.json_response({"success": True, **data}, status=status)


def _thread(request: web.Request) -> tuple[Workspaces, ThreadRef]:
    """The workspaces and the thread the path names (ids checked before any path is built)."""
    info = request.match_info
    key = ThreadRef(check_id("clientId", info["client_id"]), check_id("userId", info["user_id"]), check_thread_id(info["thread_id"]))
    return request.app[WORKSPACES], key


def ids_json(key: ThreadRef) -> dict:
    """The thread's ids as the API names them."""
    return {"clientId": key.client_id, "userId": key.user_id, "threadId": key.thread_id}


def _optional(body: dict, name: str, kind: type, default: object = None) -> object:
    value = body.get(name, default)
    if value is not None and not isinstance(value, kind):
        raise Invalid(f"{name} must be a {'boolean' if kind is bool else 'string'}")
    return value


def public_origin(request: web.Request) -> str:
    """The origin of the preview links we hand out: EDGE_PUBLIC_URL, else what the client (or a trusted
    proxy's ``X-Forwarded-Host``/``-Proto``) used."""
    public_url = request.app[SETTINGS].public_url
    return public_url or request.app[CLIENT_ORIGIN](request)


async def init(request: web.Request) -> web.Response:
    """``POST /api/init {clientId, userId, threadId, repoUrl, sessionId?}``: clone if needed, create or
    resume the thread (``sessionId``: the caller names the thread's session)."""
    settings = request.app[SETTINGS]
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
    key = ThreadRef(client_id, user_id, thread_id)
    result = await initialise(request.app, key, repo, origin=origin, session_id=session_id)
    session = result.session
    return ok(
        {
            "sessionId": session.session_id,
            "previewUrl": f"{origin}/session/{session.session_id}/",
            "branch": session.branch,
            "resumed": result.resumed,
            "cloned": result.cloned,
            "workspacePath": session.worktree,
            "repoUrl": session.repo_url,
            **ids_json(key),
        }
    )


async def init_status(request: web.Request) -> web.Response:
    """``GET /api/init/<c>/<u>/<t>``: the thread's init status (``cloning`` with git's progress) and context."""
    ws, key = _thread(request)
    c, u, t = key
    state = ws.state(key)
    context = read_json_file(ws.context_path(key))
    if state is None and context is None:
        raise NotFound(f"thread {t!r} of {c}/{u} is not initialised")
    context = context or {}
    live = state.as_json() if state is not None else {"status": context.get("status", "ready"), "progress": ""}
    return ok({**ids_json(key), **context, **live})


async def git_status(request: web.Request) -> web.Response:
    ws, key = _thread(request)
    return ok({**ids_json(key), **(await gitops.status(ws, key)).as_json()})


async def git_commit(request: web.Request) -> web.Response:
    ws, key = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    message = _optional(body, "message", str)
    if message is None:
        message = f"Changes from thread {key.thread_id}"
    if not message.strip() or "\0" in message or len(message) > MAX_MESSAGE:  # type: ignore[union-attr]
        raise Invalid(f"message must be non-empty text of at most {MAX_MESSAGE} characters, without NUL")
    result = await ws.run_detached(gitops.commit(ws, key, message))  # type: ignore[arg-type]
    return ok({**ids_json(key), **result.as_json()})


async def git_push(request: web.Request) -> web.Response:
    ws, key = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    force = bool(_optional(body, "force", bool, False))
    return ok({**ids_json(key), **(await ws.run_detached(gitops.push(ws, key, force))).as_json()})


async def git_pull(request: web.Request) -> web.Response:
    ws, key = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    branch = _optional(body, "branch", str)
    if branch is not None:
        check_branch(branch)
    result = await ws.run_detached(gitops.pull(ws, key, branch))  # type: ignore[arg-type]
    return ok({**ids_json(key), **result.as_json()})


async def git_fetch(request: web.Request) -> web.Response:
    ws, key = _thread(request)
    await read_json_body(request, MAX_BODY)
    return ok({**ids_json(key), **(await ws.run_detached(gitops.fetch(ws, key))).as_json()})


async def git_branch(request: web.Request) -> web.Response:
    ws, key = _thread(request)
    body = await read_json_body(request, MAX_BODY)
    branch = check_branch(body.get("branch"))
    create = bool(_optional(body, "createNew", bool, False))
    return ok({**ids_json(key), **(await ws.run_detached(gitops.switch_branch(ws, key, branch, create))).as_json()})


def setup(app: web.Application, settings: ControlSettings, client_origin: ClientOrigin) -> None:
    """Create the workspaces and the session registry, and add the routes (before the proxy catch-all).

    ``client_origin`` tells the origin a request's client used (the host knows which proxies to trust).
    """
    app[SETTINGS] = settings
    app[CLIENT_ORIGIN] = client_origin
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
