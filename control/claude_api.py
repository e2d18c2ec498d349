"""HTTP handlers for Claude on a thread: execute (JSON or streamed), plans and approval, cancel.

* ``POST /api/execute {instruction, clientId, userId, threadId, mode, autoCommit}``
  → ``{success, output, filesChanged, mode, durationMs, ...}``; ``mode: "plan"`` makes a plan.
* Hermes (the old container's paths and fields), the session resolved through the registry:
  ``POST /api/claude/<sessionId>/execute {instruction, userEmail, capabilities, autoCommit, planningMode}``
  → ``{success, summary, filesChanged, requiresApproval, plan, approvalToken, gitCommit, changes}``;
  ``.../execute-approved {approvalToken}``, ``.../reject-plan {approvalToken}``, ``.../cancel``,
  ``GET .../status``.

With ``Accept: text/event-stream`` an execution answers with Server-Sent Events
(``started``, ``session``, ``assistant``, ``tool``, ``file_changed``, ``tool_error``,
``committed``, then ``done`` or ``error`` carrying the result; Hermes paths add ``result``
with their own body). The run is a task of its own: a client that disconnects
does not stop it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

from aiohttp import web

from control.api import MAX_BODY, _api, _ok
from control.executors import make_executor
from control.ids import InvalidInput, check_id, check_thread_id
from control.runs import RUNNER, Run, Runner, is_destructive
from control.sessions import REGISTRY
from control.workspaces import WORKSPACES
from edge import keys, stopping
from edge.jsonbody import read_json_object

MAX_INSTRUCTION = 64 * 1024
PLAN_WORDS = ("plan", "planning")

Render = Callable[[dict], dict]


def _instruction(body: dict) -> str:
    value = body.get("instruction")
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("instruction is required: a non-empty string")
    if len(value) > MAX_INSTRUCTION or "\0" in value:
        raise InvalidInput(f"instruction must be text of at most {MAX_INSTRUCTION} characters, without NUL")
    return value.strip()


def _flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be a boolean")
    return value


def _ready(app: web.Application, key: tuple[str, str, str]) -> None:
    """404 (or 409 while /api/init runs) before anything starts on a thread that is not there."""
    ws = app[WORKSPACES]
    if not (ws.thread_path(*key) / ".git").is_file():
        raise ws.not_ready(*key)


def _session_thread(request: web.Request) -> tuple[str, str, str]:
    """sessionId → (client, user, thread) via the registry; unknown ids are threads of the default user."""
    session_id = check_id("sessionId", request.match_info["session_id"])
    session = request.app[REGISTRY].get(session_id)
    if session is not None:
        return session.client_id, session.user_id, session.thread_id
    settings = request.app[keys.SETTINGS]
    return (
        check_id("clientId", settings.default_client_id),
        check_id("userId", settings.default_user_id),
        check_thread_id(session_id),
    )


def _status(result: dict) -> int:
    return int(result.get("status", 200))


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "status"}


def _hermes(result: dict) -> dict:
    commit = result.get("commit") or {}
    body = {
        "success": result["success"],
        "summary": result.get("output") or result.get("error") or "",
        "filesChanged": result["filesChanged"],
        "requiresApproval": bool(result.get("requiresApproval")),
        "plan": result.get("plan"),
        "approvalToken": result.get("approvalToken"),
        "gitCommit": commit.get("commit") if commit.get("committed") else None,
        "changes": result["changes"],
        "mode": result["mode"],
        "durationMs": result["durationMs"],
        "runId": result["runId"],
        "threadId": result["threadId"],
    }
    for name in ("error", "expiresAt", "cancelled", "agentSessionId", "costUsd"):
        if result.get(name) is not None:
            body[name] = result[name]
    if commit.get("pushed") is not None:
        body["pushed"] = commit["pushed"]
    return body


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _answer(request: web.Request, run: Run, render: Render, final_event: str | None = None) -> web.StreamResponse:
    """The run's result as JSON (waiting for it), or its events as they happen."""
    if not _wants_stream(request):
        # shield: the handler may be cancelled (client gone), the run must not be.
        result = await asyncio.shield(run.task)  # type: ignore[arg-type]
        return web.json_response(render(result), status=_status(result))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    try:
        async for event in run.follow():
            if "result" in event:
                event = {**event, "result": _public(event["result"])}
            await response.write(_sse(event["type"], event))
        if final_event is not None and run.result is not None:
            await response.write(_sse(final_event, render(run.result)))
        await response.write_eof()
    except ConnectionError:
        pass  # the client left; the run goes on
    return response


@_api
async def execute(request: web.Request) -> web.StreamResponse:
    """``POST /api/execute``: run an instruction on a thread."""
    settings = request.app[keys.SETTINGS]
    body = await read_json_object(request, MAX_BODY)
    instruction = _instruction(body)
    key = (
        check_id("clientId", body.get("clientId", settings.default_client_id)),
        check_id("userId", body.get("userId", settings.default_user_id)),
        check_thread_id(body.get("threadId")),
    )
    mode = body.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise InvalidInput("mode must be a string")
    auto_commit = _flag(body, "autoCommit", True)
    _ready(request.app, key)
    run = request.app[RUNNER].start(*key, instruction, plan_only=(mode or "").lower() in PLAN_WORDS, auto_commit=auto_commit)
    return await _answer(request, run, _public)


@_api
async def hermes_execute(request: web.Request) -> web.StreamResponse:
    """``POST /api/claude/<sessionId>/execute``: Hermes' call; destructive instructions get a plan first."""
    key = _session_thread(request)
    body = await read_json_object(request, MAX_BODY)
    instruction = _instruction(body)
    auto_commit = _flag(body, "autoCommit", True)
    planning = _flag(body, "planningMode", False) or is_destructive(instruction)
    _ready(request.app, key)
    run = request.app[RUNNER].start(*key, instruction, plan_only=planning, auto_commit=auto_commit)
    return await _answer(request, run, _hermes, "result")


def _approval_token(body: dict) -> str:
    token = body.get("approvalToken")
    if not isinstance(token, str) or not token:
        raise InvalidInput("approvalToken is required")
    return token


@_api
async def execute_approved(request: web.Request) -> web.StreamResponse:
    """``POST /api/claude/<sessionId>/execute-approved {approvalToken}``: run exactly the stored plan."""
    key = _session_thread(request)
    body = await read_json_object(request, MAX_BODY)
    token = _approval_token(body)
    _ready(request.app, key)
    run = request.app[RUNNER].approve(token, key)
    return await _answer(request, run, _hermes, "result")


@_api
async def reject_plan(request: web.Request) -> web.Response:
    """``POST /api/claude/<sessionId>/reject-plan {approvalToken}``: discard the plan; nothing changes."""
    key = _session_thread(request)
    body = await read_json_object(request, MAX_BODY)
    token = _approval_token(body)
    plan = request.app[RUNNER].reject(token, key)
    return _ok({"rejected": True, "instruction": plan.instruction, "threadId": plan.thread_id})


@_api
async def cancel(request: web.Request) -> web.Response:
    """``POST /api/claude/<sessionId>/cancel``: stop the running execution and wait until it has stopped."""
    key = _session_thread(request)
    await read_json_object(request, MAX_BODY)
    run = request.app[RUNNER].active(*key)
    if run is None or not run.cancel():
        return _ok({"cancelled": False, "message": "no execution is running on this thread", "threadId": key[2]})
    result = await asyncio.shield(run.task)  # type: ignore[arg-type]
    return _ok({"cancelled": True, "runId": run.run_id, "filesChanged": result["filesChanged"], "threadId": key[2]})


@_api
async def status(request: web.Request) -> web.Response:
    """``GET /api/claude/<sessionId>/status``: the running execution, if any, and its events so far."""
    key = _session_thread(request)
    run = request.app[RUNNER].active(*key)
    if run is None:
        return _ok({"running": False, "threadId": key[2], "mode": request.app[RUNNER].executor.name})
    return _ok({
        "running": True, "threadId": key[2], "runId": run.run_id, "instruction": run.instruction,
        "mode": request.app[RUNNER].executor.name, "events": run.events,
    })


def setup(app: web.Application) -> None:
    """Add the Claude routes (call after ``control.api.setup``: it creates the workspaces)."""
    app[RUNNER] = Runner(app[WORKSPACES], make_executor(app[keys.SETTINGS]))
    stopping.add_drain(app, app[RUNNER].drain)
    app.router.add_post("/api/execute", execute)
    session = "/api/claude/{session_id}"
    app.router.add_post(f"{session}/execute", hermes_execute)
    app.router.add_post(f"{session}/execute-approved", execute_approved)
    app.router.add_post(f"{session}/reject-plan", reject_plan)
    app.router.add_post(f"{session}/cancel", cancel)
    app.router.add_get(f"{session}/status", status)

