"""What every executor receives and returns, and the prompt they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

# An executor reports progress as small JSON-ready dicts: {"type": "assistant", "text": ...},
# {"type": "tool", "tool": "Edit", "file": "src/x.astro"}, ...
Emit = Callable[[dict], None]


class ExecutionError(Exception):
    """A run that could not complete; the message says what happened (no secrets in it)."""


@dataclass(frozen=True)
class RunRequest:
    """One instruction for one thread's worktree."""

    instruction: str
    worktree: Path
    plan_only: bool = False  # produce a plan, change no file
    approved_plan: str | None = None  # execute exactly this plan
    history: str = ""  # a short summary of the thread's recent instructions
    resume_session: str | None = None  # the agent's session of the previous run (claude-code)
    agent_home: Path | None = None  # the agent's HOME (its session files), in the user's workspace folder


@dataclass
class RunResult:
    """What a run did: the agent's final text, the files it touched, its session."""

    success: bool
    output: str
    error: str | None = None
    session_id: str | None = None
    files_touched: list[str] = field(default_factory=list)
    cost_usd: float | None = None
    turns: int | None = None


class Executor(Protocol):
    name: str

    async def run(self, request: RunRequest, emit: Emit) -> RunResult:
        """Carry out ``request`` in its worktree; cancellation must stop all work promptly."""


PLAN_RULES = (
    "Do not change any file now. Read what you need, then answer with a short, numbered plan "
    "of the changes you would make (files and what changes in each)."
)


def build_prompt(request: RunRequest) -> str:
    """The text given to the model: context of the thread, the instruction, and the mode's rules."""
    parts = [
        "You are editing a website (an Astro project) in the current folder on behalf of its owner. "
        "Change only files inside this folder. Keep changes small and focused on the request."
    ]
    if request.history:
        parts.append("Earlier instructions on this thread (oldest first):\n" + request.history)
    if request.approved_plan is not None:
        parts.append(f"The owner approved this plan for the instruction below. Carry it out exactly:\n{request.approved_plan}")
    parts.append(f"Instruction:\n{request.instruction}")
    if request.plan_only:
        parts.append(PLAN_RULES)
    return "\n\n".join(parts)


def relative_to(worktree: Path, path: str) -> str:
    """A path as the worktree sees it (absolute paths inside it become relative)."""
    try:
        return str(Path(path).resolve().relative_to(worktree.resolve()))
    except (ValueError, OSError):
        return path
