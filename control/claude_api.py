"""HTTP handlers for Claude on a thread: execute (JSON or streamed), plans and approval, cancel.

* ``POST /api/execute {instruction, clientId, userId, threadId, mode, autoCommit}``
  → ``{success, output, filesChanged, mode, durationMs, ...}``; ``mode: "plan"`` makes a plan.
  Without threadId (Hermes' first instruction: ``{instruction}`` alone) it works on the
  default thread, opened from the user's clone or DEFAULT_REPO_URL if needed.
* Hermes (the old container's paths and fields), the session resolved through the registry:
  ``POST /api/claude/<sessionId>/execute {instruction, userEmail, capabilities, autoCommit, planningMode}``
  → ``{success, summary, filesChanged, requiresApproval, plan, approvalToken, gitCommit, changes}``
  (a session id the edge does not know becomes a thread: ``control.threads``);
  ``.../execute-approved {approvalToken}``, ``.../reject-plan {approvalToken}`` (Hermes' own token
  acts on the session's one pending plan: ``control.runs.PlanStore``), ``.../cancel``, ``GET .../status``.

A JSON answer still running after HERMES_REPLY_SECONDS is ``{success: true, inProgress: true}``:
the run goes on (and commits); ``GET .../status`` shows it and then its result.

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

from control.api import MAX_BODY, ok, public_origin
from control.executors import make_executor
from control.runs import RUNNER, Run, Runner, is_destructive
from control.services import SETTINGS
from control.sessions import REGISTRY
from control.threads import THREADS, ThreadOpener
from control.workspaces import WORKSPACES
from core.errors import Invalid, NotFound
from core.ids import ThreadRef, check_id, check_session_name, check_thread_id
from core.jsonbody import read_json_body

MAX_INSTRUCTION = 64 * 1024
PLAN_WORDS = ("plan", "planning")

Render = Callable[[dict], dict]


def _instruction(body: dict) -> str:
    value = body.get("instruction")
    if not isinstance(value, str) or not value.strip():
        raise Invalid("instruction is required: a non-empty string")
    if len(value) > MAX_INSTRUCTION or "\0" in value:
        raise Invalid(f"instruction must be text of at most {MAX_INSTRUCTION} characters, without NUL")
    return value.strip()


def _flag(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise Invalid(f"{name} must be a boolean")
    return value


def _ready(app: web.Application, key: ThreadRef) -> None:
    """404 (or 409 while /api/init runs) before anything starts on a thread that is not there."""
    ws = app[WORKSPACES]
    if not (ws.thread_path(key) / ".git").is_file():
        raise ws.not_ready(key)


def _known_session(request: web.Request) -> ThreadRef:
    """The thread of a session the edge knows (registered); else the 404 Hermes reads as "session not found"."""
    session_id = check_id("sessionId", request.match_info["session_id"])
    session = request.app[REGISTRY].get(session_id)
    if session is None:
        raise NotFound(
            f"Session not found: {session_id!r} is not a session of this editing environment",
            hint="a session starts with POST /api/claude/<sessionId>/execute or /api/init",
        )
    return session.thread


def _user_email(body: dict) -> str:
    value = body.get("userEmail")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 254 or any(c in value for c in "\0\r\n"):
        raise Invalid("userEmail must be an e-mail address of at most 254 characters")
    return value


def _status(result: dict) -> int:
    return int(result.get("status", 200))


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "status"}


def _hermes(result: dict) -> dict:
    """The old container's answer, in the shapes Hermes' emails print well, with the richer fields alongside."""
    commit = result.get("commit") or {}
    committed = commit.get("commit") if commit.get("committed") else None
    body = {
        **_public(result),
        "success": result["success"],
        "summary": result.get("summary") or "",
        "message": result.get("summary") or "",
        "filesChanged": result.get("filesChanged", []),
        "requiresApproval": bool(result.get("requiresApproval")),
        "plan": result.get("plan"),
        "approvalToken": result.get("approvalToken"),
        "gitCommit": committed[:7] if committed else None,
        "gitCommitFull": committed,
        "changes": result.get("changes", []),
    }
    if commit.get("pushed") is not None:
        body["pushed"] = commit["pushed"]
    return body


def _in_progress(run: Run) -> dict:
    """Hermes' answer for a run still going when its 300 s are nearly up: the run goes on and commits."""
    return {
        "success": True,
        "inProgress": True,
        "summary": "I'm still working on this change. The preview will update when it is done.",
        "runId": run.run_id,
        "threadId": run.thread.thread_id,
        "requiresApproval": False,
        "plan": None,
        "approvalToken": None,
        "filesChanged": [],
        "changes": [],
        "gitCommit": None,
        "status": 200,
    }


def _wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _answer(request: web.Request, run: Run, render: Render, final_event: str | None = None) -> web.StreamResponse:
    """The run's result as JSON (waiting for it), or its events as they happen."""
    if not _wants_stream(request):
        # asyncio.wait never cancels the run, whether it times out or the handler is cancelled (client gone).
        limit = request.app[SETTINGS].hermes_reply_seconds or None
        done, _ = await asyncio.wait({run.task}, timeout=limit)  # type: ignore[arg-type]
        result = run.task.result().as_json() if done else _in_progress(run)  # type: ignore[union-attr]
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
            await response.write(_sse(final_event, render(run.result.as_json())))
        await response.write_eof()
    except ConnectionError:
        pass  # the client left; the run goes on
    return response


async def execute(request: web.Request) -> web.StreamResponse:
    """``POST /api/execute``: run an instruction on a thread (none named: the default thread, opened if needed)."""
    settings = request.app[SETTINGS]
    body = await read_json_body(request, MAX_BODY)
    instruction = _instruction(body)
    mode = body.get("mode")
    if mode is not None and not isinstance(mode, str):
        raise Invalid("mode must be a string")
    auto_commit = _flag(body, "autoCommit", True)
    if body.get("threadId") is None and body.get("clientId") is None and body.get("userId") is None:
        key = await request.app[THREADS].default_thread(public_origin(request))  # Hermes' first instruction
    else:
        key = ThreadRef(
            check_id("clientId", body.get("clientId", settings.default_client_id)),
            check_id("userId", body.get("userId", settings.default_user_id)),
            check_thread_id(body.get("threadId", settings.default_thread_id)),
        )
    _ready(request.app, key)
    run = request.app[RUNNER].start(key, instruction, plan_only=(mode or "").lower() in PLAN_WORDS, auto_commit=auto_commit)
    return await _answer(request, run, _hermes)  # Hermes' first call reads the same fields as its later ones


async def hermes_execute(request: web.Request) -> web.StreamResponse:
    """``POST /api/claude/<sessionId>/execute``: Hermes' call; destructive instructions get a plan first.

    A session id the edge does not know yet becomes a thread of the default user (``control.threads``)."""
    session_id = check_id("sessionId", request.match_info["session_id"])
    body = await read_json_body(request, MAX_BODY)
    instruction = _instruction(body)
    auto_commit = _flag(body, "autoCommit", True)
    planning = _flag(body, "planningMode", False) or is_destructive(instruction)
    email = _user_email(body)
    if request.app[REGISTRY].get(session_id) is None:
        check_session_name(session_id)
    key = await request.app[THREADS].hermes_session(session_id, public_origin(request), email)
    _ready(request.app, key)
    run = request.app[RUNNER].start(key, instruction, plan_only=planning, auto_commit=auto_commit)
    return await _answer(request, run, _hermes, "result")


def _approval_token(body: dict) -> str:
    token = body.get("approvalToken")
    if not isinstance(token, str) or not token or len(token) > 512:
        raise Invalid("approvalToken is required: a string")
    return token


async def execute_approved(request: web.Request) -> web.StreamResponse:
    """``POST /api/claude/<sessionId>/execute-approved {approvalToken}``: run exactly the stored plan."""
    key = _known_session(request)
    body = await read_json_body(request, MAX_BODY)
    token = _approval_token(body)
    _ready(request.app, key)
    run = request.app[RUNNER].approve(token, key)
    return await _answer(request, run, _hermes, "result")


async def reject_plan(request: web.Request) -> web.Response:
    """``POST /api/claude/<sessionId>/reject-plan {approvalToken}``: discard the plan; nothing changes."""
    key = _known_session(request)
    body = await read_json_body(request, MAX_BODY)
    token = _approval_token(body)
    plan = request.app[RUNNER].reject(token, key)
    return ok({"rejected": True, "planId": plan.plan_id, "instruction": plan.instruction, "threadId": plan.thread.thread_id,
                "summary": "The plan was discarded; nothing was changed."})


async def cancel(request: web.Request) -> web.Response:
    """``POST /api/claude/<sessionId>/cancel``: stop the running execution and wait until it has stopped."""
    key = _known_session(request)
    await read_json_body(request, MAX_BODY)
    run = request.app[RUNNER].active(key)
    if run is None or not run.cancel():
        return ok({"cancelled": False, "message": "no execution is running on this thread", "threadId": key[2]})
    result = await asyncio.shield(run.task)  # type: ignore[arg-type]
    return ok({"cancelled": True, "runId": run.run_id, "filesChanged": result.files_changed, "threadId": key[2]})


async def status(request: web.Request) -> web.Response:
    """``GET /api/claude/<sessionId>/status``: the running execution, if any, and its events so far."""
    key = _known_session(request)
    runner = request.app[RUNNER]
    run = runner.active(key)
    if run is None:
        last = runner.last_result(key)
        return ok({
            "running": False, "threadId": key[2], "mode": runner.executor.name,
            "pendingPlans": [p.summary() for p in runner.plans.pending(key)],
            **({"lastResult": _hermes(last.as_json())} if last is not None else {}),
        })
    return ok({
        "running": True, "threadId": key[2], "runId": run.run_id, "instruction": run.instruction,
        "mode": request.app[RUNNER].executor.name, "events": run.events,
    })


def setup(app: web.Application) -> None:
    """Add the Claude routes (call after ``control.api.setup``: it creates the workspaces).

    The host waits for ``app[RUNNER].drain`` as it stops (the edge adds it to its drains).
    """
    app[RUNNER] = Runner(app[WORKSPACES], make_executor(app[SETTINGS]))
    app[THREADS] = ThreadOpener(app)
    app.router.add_post("/api/execute", execute)
    session = "/api/claude/{session_id}"
    app.router.add_post(f"{session}/execute", hermes_execute)
    app.router.add_post(f"{session}/execute-approved", execute_approved)
    app.router.add_post(f"{session}/reject-plan", reject_plan)
    app.router.add_post(f"{session}/cancel", cancel)
    app.router.add_get(f"{session}/status", status)

