"""The default executor: no model, a small deterministic edit that the preview shows.

It exists so the whole loop (instruction → edit → commit → live preview) can be
tried without credentials, and it says so: every answer has ``mode: simulation``.
The edit puts one marker paragraph, with the instruction HTML-escaped, into the
home page (``src/pages/index.astro``, created if missing), replacing the marker
of the previous simulated run, before ``</body>`` when there is one.
"""

from __future__ import annotations

import html
import re

from control.executors.base import Emit, RunRequest, RunResult

TARGET = "src/pages/index.astro"
MARKER = "data-webordinary-simulation"
_MARKER_LINE = re.compile(rf"^[ \t]*<p {MARKER}>.*</p>[ \t]*\n?", re.MULTILINE)


def marker_line(instruction: str) -> str:
    text = " ".join(instruction.split())[:500]
    return f"<p {MARKER}>Simulated edit: {html.escape(text)}</p>\n"


class SimulationExecutor:
    name = "simulation"

    async def run(self, request: RunRequest, emit: Emit) -> RunResult:
        if request.plan_only:
            plan = (
                f"1. Open {TARGET}.\n"
                f"2. Add (or update) a marker paragraph reading \"Simulated edit: {' '.join(request.instruction.split())[:500]}\".\n"
                "(simulation: no model was asked; CLAUDE_EXECUTOR selects a real one)"
            )
            emit({"type": "assistant", "text": plan})
            return RunResult(True, plan)
        path = request.worktree / TARGET
        emit({"type": "tool", "tool": "Edit", "file": TARGET})
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        line = marker_line(request.instruction)
        if _MARKER_LINE.search(old):
            new = _MARKER_LINE.sub(lambda _: line, old, count=1)
        elif "</body>" in old:
            new = old.replace("</body>", line + "</body>", 1)
        else:
            new = old + ("" if not old or old.endswith("\n") else "\n") + line
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new, encoding="utf-8")
        summary = f"Simulation: put the instruction as a marker paragraph into {TARGET}."
        emit({"type": "assistant", "text": summary})
        return RunResult(True, summary, files_touched=[TARGET])
