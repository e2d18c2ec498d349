"""The old container's preview API: ``/api/astro/{start,stop,restart,build,logs,status}/<client>/<user>/<thread>``."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from core.ids import ThreadRef
from core.jsonbody import json_error
from preview.appkeys import PREVIEWS
from preview.build import build_site
from preview.node import PreviewError
from preview.supervisor import Preview, PreviewState, PreviewSupervisor

THREAD_PATH = "/{client_id}/{user_id}/{thread_id}"
MAX_LOG_LINES = 2000


def _thread(request: web.Request) -> tuple[PreviewSupervisor, ThreadRef, str]:
    """The supervisor, the thread and its session, after validating ids (before any path is built)."""
    info = request.match_info
    thread = ThreadRef(info["client_id"], info["user_id"], info["thread_id"])
    if not thread.valid():
        raise json_error(
            400, "invalid clientId, userId or threadId (letters, digits, _ - . only; no leading - or .; no ..; at most 64)"
        )
    supervisor = request.app[PREVIEWS]
    return supervisor, thread, supervisor.locator.session_id(thread)


def _folder(supervisor: PreviewSupervisor, thread: ThreadRef, session: str) -> Path:
    """The thread's worktree as the locator knows it (control's locator also finds unregistered thread folders)."""
    folder = supervisor.locator.folder(session)
    if folder is None or not folder.is_dir():
        raise json_error(404, f"thread {thread.thread_id!r} has no workspace folder")
    return folder


def _wait(request: web.Request) -> float | None:
    raw = request.query.get("wait")
    if raw is None:
        return None
    try:
        return max(0.0, min(float(raw), 600.0))
    except ValueError:
        raise json_error(400, "wait must be a number of seconds") from None


def _answer(supervisor: PreviewSupervisor, preview: Preview) -> web.Response:
    status = supervisor.status(preview.session_id)
    if preview.state is PreviewState.FAILED:
        return web.json_response({"success": False, "error": preview.error, **status}, status=500)
    return web.json_response({"success": True, **status}, status=200 if preview.state is PreviewState.READY else 202)


async def _run(request: web.Request, action: str) -> web.Response:
    """Start or restart a thread's preview, waiting for it as the request asks."""
    supervisor, thread, session = _thread(request)
    folder = _folder(supervisor, thread, session)
    launch = supervisor.restart if action == "restart" else supervisor.start
    try:
        preview = await launch(session, folder, _wait(request))
    except PreviewError as exc:
        raise json_error(503, str(exc)) from None
    return _answer(supervisor, preview)


async def start(request: web.Request) -> web.Response:
    return await _run(request, "start")


async def restart(request: web.Request) -> web.Response:
    return await _run(request, "restart")


async def stop(request: web.Request) -> web.Response:
    supervisor, _, session = _thread(request)
    was_running = await supervisor.stop(session, "stop requested through the API")
    return web.json_response({"success": True, "sessionId": session, "state": "stopped", "wasRunning": was_running})


async def build(request: web.Request) -> web.Response:
    supervisor, thread, session = _thread(request)
    folder = _folder(supervisor, thread, session)
    lock = supervisor.build_locks[folder]
    if lock.locked():
        raise json_error(409, "a build of this thread is already running")
    async with lock:
        result = await build_site(supervisor, session, folder)
    return web.json_response({"sessionId": session, **result}, status=200 if result["success"] else 422)


async def status(request: web.Request) -> web.Response:
    supervisor, _, session = _thread(request)
    return web.json_response({"success": True, **supervisor.status(session)})


async def logs(request: web.Request) -> web.StreamResponse:
    supervisor, thread, session = _thread(request)
    try:
        count = max(0, min(int(request.query.get("lines", "100")), MAX_LOG_LINES))
    except ValueError:
        raise json_error(400, "lines must be a whole number") from None
    preview = supervisor.get(session)
    if request.query.get("follow") not in ("1", "true"):
        lines = supervisor.log_lines(session, count)
        state = preview.state.value if preview else PreviewState.STOPPED.value
        return web.json_response({"success": True, "sessionId": session, "state": state, "lines": lines})
    if preview is None:
        preview = supervisor.track(session, _folder(supervisor, thread, session))
    response = web.StreamResponse(
        headers={"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    async for line in preview.log.follow(backlog=count):
        await response.write(line.encode() + b"\n")
    await response.write_eof()
    return response


def setup(app: web.Application) -> None:
    app.router.add_post("/api/astro/start" + THREAD_PATH, start)
    app.router.add_post("/api/astro/stop" + THREAD_PATH, stop)
    app.router.add_post("/api/astro/restart" + THREAD_PATH, restart)
    app.router.add_post("/api/astro/build" + THREAD_PATH, build)
    app.router.add_get("/api/astro/logs" + THREAD_PATH, logs)
    app.router.add_get("/api/astro/status" + THREAD_PATH, status)
