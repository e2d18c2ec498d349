"""Claude executors: what turns an instruction into file edits in a thread's worktree.

``make_executor(settings)`` picks one by CLAUDE_EXECUTOR: ``claude-code`` (the
Claude Code CLI, headless), ``bedrock`` (a Converse API loop with file tools)
or ``simulation`` (the honest default: a small deterministic edit).
"""

from __future__ import annotations

from control.executors.base import Emit, ExecutionError, Executor, RunRequest, RunResult
from control.settings import ControlSettings


def make_executor(settings: ControlSettings) -> Executor:
    """The executor CLAUDE_EXECUTOR names (settings already checked the name)."""
    if settings.claude_executor == "claude-code":
        from control.executors.claude_code import ClaudeCodeExecutor

        return ClaudeCodeExecutor(settings)
    if settings.claude_executor == "bedrock":
        from control.executors.bedrock import BedrockExecutor

        return BedrockExecutor(settings)
    from control.executors.simulation import SimulationExecutor

    return SimulationExecutor()


__all__ = ["Emit", "Executor", "ExecutionError", "RunRequest", "RunResult", "make_executor"]
