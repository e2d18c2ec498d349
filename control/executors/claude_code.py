"""The real Claude Code agent, headless in the thread's worktree.

Runs ``claude -p --output-format stream-json --verbose`` (an argument list,
never a shell; the prompt on stdin, so no instruction can look like an option)
in its own process group, and reads the stream line by line:

* ``{"type": "system", "subtype": "init", "session_id": ...}`` — the agent's session;
* ``{"type": "assistant", "message": {"content": [text | tool_use ...]}}`` — progress;
* ``{"type": "user", "message": {"content": [tool_result ...]}}`` — a tool's outcome;
* ``{"type": "result", "is_error": bool, "result": ..., "session_id": ..., "total_cost_usd": ...}``.

Tools: read and edit inside the worktree only (``--permission-mode acceptEdits``
with Read, Edit, MultiEdit, Glob, Grep; no bare ``Write``, which can write
outside the folder; ``Bash`` disallowed unless CLAUDE_ALLOW_SHELL=1). A plan is
made with ``--permission-mode plan`` and the reading tools. Cancelling the
run (cancel endpoint, EXECUTION_TIMEOUT) ends the whole process group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path
from subprocess import PIPE

import anyio

from control.executors.base import Emit, ExecutionError, RunRequest, RunResult, build_prompt, relative_to
from edge.settings import Settings
from preview.process import signal_group

log = logging.getLogger("edge.control.claude_code")

READ_TOOLS = ("Read", "Glob", "Grep")
EDIT_TOOLS = ("Edit", "MultiEdit")
CHANGING_TOOLS = {"Edit", "MultiEdit", "Write", "NotebookEdit"}
MAX_LINE = 16 * 1024 * 1024
STDERR_TAIL = 4096
TERM_GRACE = 3.0
EXIT_GRACE = 10.0  # for the CLI to exit after its result line


class _NotStarted(ExecutionError):
    """The CLI ended before its session started (nothing was done)."""


class ClaudeCodeExecutor:
    name = "claude-code"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def argv(self, request: RunRequest) -> list[str]:
        s = self.settings
        tools = READ_TOOLS if request.plan_only else READ_TOOLS[:1] + EDIT_TOOLS + READ_TOOLS[1:]
        if s.claude_allow_shell and not request.plan_only:
            tools += ("Bash",)
        args = [
            s.claude_cli,
            "-p",
            "--output-format", "stream-json",
            "--verbose",
            "--permission-mode", "plan" if request.plan_only else "acceptEdits",
            "--allowedTools", ",".join(tools),
            "--max-turns", str(max(1, s.claude_max_turns)),
        ]
        if not s.claude_allow_shell:
            args += ["--disallowedTools", "Bash"]
        if s.claude_model:
            args += ["--model", s.claude_model]
        if request.resume_session:
            args += ["--resume", request.resume_session]
        return args

    def env(self) -> dict[str, str]:
        """An allowlist: the child env, plus the credentials Claude Code itself needs (never GITHUB_TOKEN)."""
        s = self.settings
        env = dict(s.child_env)
        env.setdefault("PATH", os.defpath)
        env.update(DISABLE_AUTOUPDATER="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
        extra = dict(s.claude_env)
        if s.claude_use_bedrock:
            env.update({k: v for k, v in extra.items() if k.startswith("AWS_")})
            env["CLAUDE_CODE_USE_BEDROCK"] = "1"
            if s.aws_region:
                env["AWS_REGION"] = s.aws_region
            if s.claude_model:
                env["ANTHROPIC_MODEL"] = s.claude_model
        elif "ANTHROPIC_API_KEY" in extra:
            env["ANTHROPIC_API_KEY"] = extra["ANTHROPIC_API_KEY"]
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
        try:
            proc = await anyio.open_process(
                self.argv(request), cwd=request.worktree, env=self.env(),
                stdin=PIPE, stdout=PIPE, stderr=PIPE, start_new_session=True,
            )
        except OSError as exc:
            raise ExecutionError(f"could not start Claude Code ({self.settings.claude_cli}): {exc.strerror or exc}") from None
        log.info("claude-code started (pid %d) in %s", proc.pid, request.worktree)
        stream = _Stream(request.worktree, emit)
        stderr = bytearray()
        try:
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            async with anyio.create_task_group() as group:
                tail_done = anyio.Event()
                group.start_soon(_tail, proc.stderr, stderr, tail_done)
                await proc.stdin.send(build_prompt(request).encode())
                await proc.stdin.aclose()
                await stream.read(proc.stdout)
                returncode = None
                with anyio.move_on_after(EXIT_GRACE):
                    returncode = await proc.wait()
                with anyio.move_on_after(1):  # a grandchild may still hold stderr open
                    await tail_done.wait()
                group.cancel_scope.cancel()
        finally:
            stopper = asyncio.ensure_future(_stop(proc))
            try:
                await asyncio.shield(stopper)
            except asyncio.CancelledError:
                await stopper
                raise
        if stream.result is None:
            tail = stderr.decode("utf-8", "replace").strip()[-300:]
            error = _NotStarted if stream.session_id is None else ExecutionError
            raise error(f"Claude Code exited with status {returncode} without a result" + (f": {tail}" if tail else ""))
        return stream.finish()


async def _stop(proc: anyio.abc.Process) -> None:
    """End the agent and everything it started: TERM to the group, then KILL after a grace period."""
    if proc.returncode is None:
        signal_group(proc.pid, signal.SIGTERM)
        with anyio.move_on_after(TERM_GRACE):
            await proc.wait()
    signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()


async def _tail(receive: anyio.abc.ByteReceiveStream, into: bytearray, done: anyio.Event) -> None:
    async for chunk in receive:
        into += chunk
        del into[:-STDERR_TAIL]
    done.set()


class _Stream:
    """The stream-json protocol, turned into progress events and a RunResult."""

    def __init__(self, worktree: Path, emit: Emit) -> None:
        self.worktree = worktree
        self.emit = emit
        self.session_id: str | None = None
        self.result: dict | None = None
        self.touched: list[str] = []
        self._pending: dict[str, tuple[str, str | None]] = {}  # tool_use id → (tool, file)

    async def read(self, receive: anyio.abc.ByteReceiveStream) -> None:
        buffer = bytearray()
        async for chunk in receive:
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                self.line(line)
                if self.result is not None:
                    return  # the last message; a leftover child may keep the pipe open
            if len(buffer) > MAX_LINE:
                raise ExecutionError("Claude Code wrote a line longer than 16 MiB")
        if buffer.strip():
            self.line(bytes(buffer))

    def line(self, raw: bytes) -> None:
        try:
            item = json.loads(raw)
        except ValueError:
            log.debug("ignoring a non-JSON line from Claude Code: %.200r", raw)
            return
        if not isinstance(item, dict):
            return
        kind = item.get("type")
        if isinstance(item.get("session_id"), str) and item["session_id"] != self.session_id:
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
        error = None
        if failed:
            error = f"Claude Code reported an error ({result.get('subtype', 'error')})" + (f": {text[:300]}" if text else "")
        return RunResult(
            success=not failed,
            output=text,
            error=error,
            session_id=self.session_id,
            files_touched=self.touched,
            cost_usd=cost if isinstance(cost, (int, float)) else None,
            turns=turns if isinstance(turns, int) else None,
        )


def _content(item: dict) -> list[dict]:
    message = item.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
