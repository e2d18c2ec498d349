"""Background processes for the benchmarks, each in its own process group, all stopped at the end.

A dev server leaves children (esbuild) behind, so a process is stopped by
signalling its whole group: SIGTERM, a grace period, then SIGKILL (the benchmarks are
synchronous scripts, so this is the blocking twin of :meth:`core.processes.Child.stop`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from core.processes import signal_group


def stop_group(process: subprocess.Popen, grace: float = 10) -> None:
    """Stop ``process`` and everything left in its process group, then reap it."""
    signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    signal_group(process.pid, signal.SIGKILL)  # esbuild and anything else left in the group
    process.wait()


def exit_on_sigterm() -> None:
    """Let SIGTERM (``timeout``, a CI runner) end a benchmark as Ctrl-C does, through its ``finally``
    blocks: its processes run in sessions of their own, so nothing else would stop them."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class Processes:
    """Started processes with their output in ``<logs>/<name>.log``; ``stop_all`` stops them in reverse."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen] = []
        exit_on_sigterm()

    def start(self, name: str, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                args, cwd=cwd, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.started.append(process)
        return process.pid

    def log_tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop_group(process)
