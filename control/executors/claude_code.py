"""The real Claude Code agent, headless in the thread's worktree.

Runs ``claude -p --output-format stream-json --verbose`` (an argument list,
never a shell; the prompt on stdin, so no instruction can look like an option)
in its own process group, and reads the stream line by line:

* ``{"type": "system", "subtype": "init", "session_id": ...}`` — the agent's session;
* ``{"type": "assistant", "message": {"content": [text | tool_use ...]}}`` — progress;
* ``{"type": "user", "message": {"content": [tool_result ...]}}`` — a tool's outcome;
* ``{"type": "result", "is_error": bool, "result": ..., "session_id": ..., "total_cost_usd": ...}``.

Tools (``--tools``, which sets what the model is offered, proven against the pinned
CLI 2.1.332 by the request its endpoint receives): Read, Glob, Grep, Edit and Write;
Read, Glob and Grep alone in plan mode (``--permission-mode plan``); Bash only with
CLAUDE_ALLOW_SHELL=1. ``--restricted`` confines the file tools to the worktree and
ignores user, project and local settings files (no hooks or permissions from the
site's repository); ``--strict-mcp-config`` loads no MCP server;
``--disable-slash-commands`` loads no skill; ``--permission-prompts none`` denies
whatever would need a person's approval.

Environment: an allowlist (``env``); ``HOME`` is ``RunRequest.agent_home`` in the
user's workspace folder, where the CLI keeps its sessions, so ``--resume`` works
after a container restart. Failures name their cause (``apierrors``): the result
line's ``api_error_status`` and the retry events' error kind. Cancelling the run
(cancel endpoint, EXECUTION_TIMEOUT, the edge stopping) ends the whole process group.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

import anyio

from control.executors import apierrors
from control.executors.base import Emit, ExecutionError, RunRequest, RunResult, build_prompt, relative_to
from control.settings import ControlSettings
from core import processes

log = logging.getLogger(__name__)

READ_TOOLS = ("Read", "Glob", "Grep")
EDIT_TOOLS = ("Edit", "Write")  # Claude Code 2.1.332 has no MultiEdit; Write is confined by --restricted
# Claude Code's documented switches for a headless, offline-but-for-the-model run.
QUIET_ENV = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
CHANGING_TOOLS = {"Edit", "MultiEdit", "Write", "NotebookEdit"}
MAX_LINE = 16 * 1024 * 1024
STDERR_TAIL = 4096
TERM_GRACE = 3.0
EXIT_GRACE = 10.0  # for the CLI to exit after its result line


class _NotStarted(ExecutionError):
    """The CLI ended before its session started (nothing was done)."""


class ClaudeCodeExecutor:
    name = "claude-code"

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings

    def tools(self, request: RunRequest) -> tuple[str, ...]:
        """Exactly the tools the model is offered."""
        if request.plan_only:
            return READ_TOOLS
        return READ_TOOLS + EDIT_TOOLS + (("Bash",) if self.settings.claude_allow_shell else ())

    def argv(self, request: RunRequest) -> list[str]:
        s = self.settings
        tools = self.tools(request)
        args = [
            s.claude_cli,
            "-p",
            "--output-format", "stream-json",
            "--verbose",
            "--permission-mode", "plan" if request.plan_only else "acceptEdits",
            "--tools", ",".join(tools),
            "--restricted",
            "--strict-mcp-config",
            "--disable-slash-commands",
            "--permission-prompts", "none",
            "--max-turns", str(max(1, s.claude_max_turns)),
        ]
        if "Bash" in tools:
            args += ["--allowedTools", "Bash"]  # acceptEdits approves only edits; a shell must be allowed by name
        if s.claude_model:
            args += ["--model", s.claude_model]
        if request.resume_session:
            args += ["--resume", request.resume_session]
        return args

    def env(self, home: Path | None = None) -> dict[str, str]:
        """An allowlist: the child env, the CLI's quiet switches, and what its provider needs (never GITHUB_TOKEN)."""
        s = self.settings
        env = dict(s.child_env)
        env.setdefault("PATH", os.defpath)
        if home is not None:
            env["HOME"] = str(home)
        env.update(QUIET_ENV)
        env["CLAUDE_CODE_MAX_RETRIES"] = str(s.claude_max_retries)
        extra = dict(s.claude_env)
        if s.claude_use_bedrock:
            env.update({k: v for k, v in extra.items() if k.startswith("AWS_")})
            env["CLAUDE_CODE_USE_BEDROCK"] = "1"
            for name in ("ANTHROPIC_BEDROCK_BASE_URL", "CLAUDE_CODE_SKIP_BEDROCK_AUTH"):
                if name in extra:
                    env[name] = extra[name]
            if s.aws_region:
                env["AWS_REGION"] = s.aws_region
        elif "ANTHROPIC_API_KEY" in extra:
            env["ANTHROPIC_API_KEY"] = extra["ANTHROPIC_API_KEY"]
        model = s.claude_model or extra.get("ANTHROPIC_MODEL")
        if model:
            env["ANTHROPIC_MODEL"] = model
        small = extra.get("ANTHROPIC_SMALL_FAST_MODEL") or s.claude_model
        if small:
            env["ANTHROPIC_SMALL_FAST_MODEL"] = small  # never a second model the account may not have enabled
        return env

    async def run(self, request: RunRequest, emit: Emit) -> RunResult:
        try:
            return await self._run_once(request, emit)
        except _NotStarted as exc:
            if not request.resume_session:
                raise ExecutionError(str(exc)) from None
            # The agent's session is gone (a new container, a cleared HOME): start a fresh one.
            log.warning("could not resume Claude Code session %s; starting a new one", request.resume_session)
            emit({"type": "resume_failed", "sessionId": request.resume_session})
            try:
                return await self._run_once(replace(request, resume_session=None), emit)
            except _NotStarted as again:
                raise ExecutionError(str(again)) from None

    async def _run_once(self, request: RunRequest, emit: Emit) -> RunResult:
        home = request.agent_home
        if home is not None:
            await anyio.to_thread.run_sync(lambda: home.mkdir(parents=True, exist_ok=True))
        try:
            child = await processes.start(
                self.argv(request), cwd=request.worktree, env=self.env(home), stdin=processes.PIPE,
            )
        except OSError as exc:
            raise ExecutionError(f"could not start Claude Code ({self.settings.claude_cli}): {exc.strerror or exc}") from None
        log.info("claude-code started (pid %d) in %s", child.pid, request.worktree)
        stream = _Stream(request.worktree, emit)
        stderr = bytearray()
        returncode = None
        try:
            assert child.stdout is not None and child.stderr is not None
            async with anyio.create_task_group() as group:
                group.start_soon(_tail, child.chunks(child.stderr), stderr)
                await child.send_input(build_prompt(request).encode())
                await stream.read(child.lines(child.stdout, max_line=MAX_LINE))
                with anyio.move_on_after(EXIT_GRACE):
                    returncode = await child.wait()
                await child.drained(1)  # a grandchild may still hold stderr open
                group.cancel_scope.cancel()
        finally:
            await child.stop(TERM_GRACE)  # the agent and everything it started, even when cancelled
        tail = stderr.decode("utf-8", "replace").strip()[-300:]
        if stream.result is None:
            error = _NotStarted if not stream.started else ExecutionError
            raise error(f"Claude Code exited with status {returncode} without a result" + (f": {tail}" if tail else ""))
        if not stream.started and stream.result.get("is_error") is True:
            # It failed before its session began (e.g. --resume of a session it no longer has): nothing was done.
            errors = stream.result.get("errors")
            detail = "; ".join(str(e) for e in errors)[:300] if isinstance(errors, list) and errors else tail
            raise _NotStarted("Claude Code could not start the session" + (f": {detail}" if detail else ""))
        return stream.finish()


async def _tail(chunks: AsyncIterator[bytes], into: bytearray) -> None:
    async for chunk in chunks:
        into += chunk
        del into[:-STDERR_TAIL]


class _Stream:
    """The stream-json protocol, turned into progress events and a RunResult."""

    def __init__(self, worktree: Path, emit: Emit) -> None:
        self.worktree = worktree
        self.emit = emit
        self.session_id: str | None = None
        self.started = False  # the init message came: the agent's session began
        self.result: dict | None = None
        self.touched: list[str] = []
        self._pending: dict[str, tuple[str, str | None]] = {}  # tool_use id → (tool, file)
        self.last_retry: dict = {}  # the CLI's last api_retry event: why a model call failed

    async def read(self, lines: AsyncIterator[bytes]) -> None:
        try:
            async with aclosing(lines):  # stops reading (for drained()) at the result line
                async for line in lines:
                    if line.strip():
                        self.line(line.rstrip(b"\n"))
                    if self.result is not None:
                        return  # the last message; a leftover child may keep the pipe open
        except processes.LineTooLong:
            raise ExecutionError("Claude Code wrote a line longer than 16 MiB") from None

    def line(self, raw: bytes) -> None:
        try:
            item = json.loads(raw)
        except ValueError:
            log.debug("ignoring a non-JSON line from Claude Code: %.200r", raw)
            return
        if not isinstance(item, dict):
            return
        kind = item.get("type")
        if kind == "system" and item.get("subtype") == "init":
            self.started = True
        if isinstance(item.get("session_id"), str) and item["session_id"] != self.session_id and self.started:
            self.session_id = item["session_id"]
            self.emit({"type": "session", "sessionId": self.session_id})
        if kind == "assistant":
            for block in _content(item):
                if block.get("type") == "text" and block.get("text"):
                    self.emit({"type": "assistant", "text": block["text"]})
                elif block.get("type") == "tool_use":
                    self._tool_use(block)
        elif kind == "user":
            for block in _content(item):
                if block.get("type") == "tool_result":
                    self._tool_result(block)
        elif kind == "system" and item.get("subtype") == "api_retry":
            self.last_retry = item
            status, error = item.get("error_status"), item.get("error")
            self.emit({"type": "retry", "attempt": item.get("attempt"), "maxRetries": item.get("max_retries"),
                       "status": status if isinstance(status, int) else None, "error": error if isinstance(error, str) else None})
        elif kind == "result":
            self.result = item

    def _tool_use(self, block: dict) -> None:
        name = str(block.get("name", ""))
        args = block.get("input") if isinstance(block.get("input"), dict) else {}
        raw = args.get("file_path") or args.get("notebook_path") or args.get("path")
        file = relative_to(self.worktree, raw) if isinstance(raw, str) else None
        self._pending[str(block.get("id"))] = (name, file)
        self.emit({"type": "tool", "tool": name, "file": file})

    def _tool_result(self, block: dict) -> None:
        name, file = self._pending.pop(str(block.get("tool_use_id")), ("", None))
        if block.get("is_error"):
            self.emit({"type": "tool_error", "tool": name, "file": file})
        elif name in CHANGING_TOOLS and file:
            if file not in self.touched:
                self.touched.append(file)
            self.emit({"type": "file_changed", "file": file})

    def finish(self) -> RunResult:
        result = self.result or {}
        text = result.get("result") if isinstance(result.get("result"), str) else ""
        cost = result.get("total_cost_usd")
        turns = result.get("num_turns")
        failed = result.get("is_error") is True
        error = self._error(result, text) if failed else None
        return RunResult(
            success=not failed,
            output=text,
            error=error,
            session_id=self.session_id,
            files_touched=self.touched,
            cost_usd=cost if isinstance(cost, (int, float)) else None,
            turns=turns if isinstance(turns, int) else None,
        )


    def _error(self, result: dict, text: str) -> str:
        """What went wrong, cause first: the API's status and the retries' error kind, else the subtype."""
        status = result.get("api_error_status")
        status = status if isinstance(status, int) else None
        kind = self.last_retry.get("error") if isinstance(self.last_retry.get("error"), str) else None
        if status is None and isinstance(self.last_retry.get("error_status"), int):
            status = self.last_retry["error_status"]
        subtype = str(result.get("subtype", "error"))
        if status is not None or kind or result.get("terminal_reason") == "api_error":
            return "Claude Code could not use the model: " + apierrors.describe(status, kind, text)
        if subtype == "error_max_turns":
            return "Claude Code stopped after its turn limit (CLAUDE_MAX_TURNS)" + (f": {text[:300]}" if text else "")
        return f"Claude Code reported an error ({subtype})" + (f": {text[:300]}" if text else "")


def _content(item: dict) -> list[dict]:
    message = item.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
