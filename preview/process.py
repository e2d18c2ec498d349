"""Child processes (Astro dev servers, npm, astro build) that never outlive the edge.

Each child starts in its own session, so it leads a process group: stopping
signals the whole group (node and whatever it spawned, such as esbuild).
Where util-linux's ``setpriv`` exists, the child also gets a parent-death
signal, so even a SIGKILLed edge leaves no dev server behind (anyio has no
``preexec_fn``; ``setpriv`` sets ``PR_SET_PDEATHSIG`` and then execs).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

import anyio
from anyio.abc import Process

from preview.logs import LogTail

_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")
DEFAULT_GRACE = 5.0


def signal_group(pgid: int, sig: int) -> None:
    """Signal every process of the group ``pgid`` (ignored once the group is gone)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _guarded(argv: Sequence[str]) -> list[str]:
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


class ManagedProcess:
    """One child process group whose output is drained into a :class:`LogTail`."""

    def __init__(self, process: Process, log: LogTail) -> None:
        self._process = process
        self.pid = process.pid
        self.log = log
        self._reader = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        try:
            async for chunk in stream:
                self.log.feed(chunk)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            self.log.flush_partial()

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the leader to exit (its output is drained meanwhile)."""
        code = await self._process.wait()
        return code

    async def drained(self, timeout: float = 1.0) -> None:
        """Wait (briefly) until the output pipe is read to its end, so the last words are in the log."""
        await asyncio.wait({self._reader}, timeout=timeout)

    def signal_group(self, sig: int) -> None:
        """Signal every process of the group (ignored once the group is gone)."""
        signal_group(self.pid, sig)

    async def stop(self, grace: float = DEFAULT_GRACE) -> int | None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; always reaps the leader.

        The group is SIGKILLed at the end even when the leader exited in time,
        so helpers it left behind cannot linger.
        """
        try:
            if self.returncode is None:
                self.signal_group(signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self._process.wait()
        finally:
            self.signal_group(signal.SIGKILL)
            with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
                await self._process.wait()
                await asyncio.wait({self._reader}, timeout=1.0)
            if not self._reader.done():
                self._reader.cancel()
        return self.returncode

    def kill_now(self) -> None:
        """Last resort from synchronous code (cancelled clean-up): SIGKILL the group."""
        self.signal_group(signal.SIGKILL)


async def spawn(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: LogTail) -> ManagedProcess:
    """Start ``argv`` (a list, never a shell string) as a new process group."""
    process = await anyio.open_process(
        _guarded(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return ManagedProcess(process, log)


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
