"""A stand-in for the ``claude`` CLI that speaks its headless stream-json protocol.

Run through a wrapper written by ``tests/fixtures_claude.py`` (which fixes the
log file). It records its argv, env, cwd, pid and prompt (one JSON line per
call), then acts on markers in the prompt:

* ``MARK[text]``  — edits ``src/index.astro`` (appends ``<p>text</p>``) with an Edit tool_use;
* ``SLEEP[n]``    — starts a child process and sleeps n seconds (for timeout and cancel);
* ``FAIL``        — ends with ``is_error: true`` (subtype "success": the flag is what counts);
* ``CRASH``       — exits with status 3 without a result line.

``--resume gone-session`` fails before the session starts, as the CLI does for an unknown session.

With ``--permission-mode plan`` it only answers with a plan. ``--resume <id>``
keeps that session id, else a new one is made.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid


def out(item: dict) -> None:
    sys.stdout.write(json.dumps(item) + "\n")
    sys.stdout.flush()


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def main(log: str) -> int:
    argv = sys.argv[1:]
    prompt = sys.stdin.read()
    asked = prompt.rsplit("Instruction:", 1)[-1]  # markers count only in the instruction, not the history
    session = option(argv, "--resume") or str(uuid.uuid4())
    record = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid(), "prompt": prompt}
    sleep = re.search(r"SLEEP\[(\d+)\]", asked)
    if sleep:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        record["child"] = child.pid
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    if option(argv, "--resume") == "gone-session":
        sys.stderr.write("No conversation found with session ID: gone-session\n")
        return 1
    out({"type": "system", "subtype": "init", "session_id": session, "cwd": os.getcwd(),
         "tools": (option(argv, "--tools") or "").split(","), "model": "fake", "permissionMode": option(argv, "--permission-mode")})
    if "CRASH" in asked:
        sys.stderr.write("fake claude crashed\n")
        return 3
    if sleep:
        out({"type": "assistant", "session_id": session, "message": {"role": "assistant", "content": [{"type": "text", "text": "Thinking slowly..."}]}})
        time.sleep(int(sleep.group(1)))
    mark = re.search(r"MARK\[([^\]]*)\]", asked)
    if option(argv, "--permission-mode") == "plan":
        text = f"Plan: 1. Append <p>{mark.group(1) if mark else 'nothing'}</p> to src/index.astro."
        out({"type": "assistant", "session_id": session, "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}})
        out({"type": "result", "subtype": "success", "is_error": False, "result": text, "session_id": session,
             "total_cost_usd": 0.001, "num_turns": 1})
        return 0
    if mark:
        path = os.path.join(os.getcwd(), "src", "index.astro")
        out({"type": "assistant", "session_id": session, "message": {"role": "assistant", "content": [
            {"type": "text", "text": "I'll edit the page."},
            {"type": "tool_use", "id": "toolu_1", "name": "Edit", "input": {"file_path": path, "old_string": "", "new_string": mark.group(1)}},
        ]}})
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"<p>{mark.group(1)}</p>\n")
        out({"type": "user", "session_id": session, "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "The file was updated.", "is_error": False},
        ]}})
    failed = "FAIL" in asked
    text = "Something went wrong." if failed else "Done: the page was updated."
    out({"type": "assistant", "session_id": session, "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}})
    out({"type": "result", "subtype": "success", "is_error": failed, "result": text, "session_id": session,
         "total_cost_usd": 0.0123, "num_turns": 2, "duration_ms": 5})
    return 0
