"""Child processes of the previews (Astro dev servers, npm, astro build) that never outlive the edge.

Each is a :class:`core.processes.Child`: the leader of its own process group
(stopping signals node and whatever it spawned, such as esbuild), with its
output (stdout and stderr together) drained into a :class:`LogTail`. Where
util-linux's ``setpriv`` exists, the child also gets a parent-death signal,
so even a SIGKILLed edge leaves no dev server behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import anyio

from core import processes
from core.processes import Child
from preview.logs import LogTail



def _into(log: LogTail) -> processes.Output:
    """Output chunks into the log tail; the empty chunk at the end records an unterminated last line."""

    def feed(chunk: bytes) -> None:
        if chunk:
            log.feed(chunk)
        else:
            log.flush_partial()

    return feed


async def spawn(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: LogTail) -> Child:
    """Start ``argv`` (a list, never a shell string) as a new process group writing into ``log``."""
    return await processes.start(
        argv, cwd=cwd, env=env, stderr=processes.STDOUT, on_output=_into(log), die_with_parent=True
    )


async def run_to_end(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: LogTail, timeout: float
) -> int | None:
    """Run a command to completion (npm ci, astro build); None when it timed out and was killed."""
    proc = await spawn(argv, cwd=cwd, env=env, log=log)
    try:
        with anyio.move_on_after(timeout):
            return await proc.wait()
        return None
    finally:
        await proc.stop(grace=2.0)
