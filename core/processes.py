"""Child processes that never outlive their purpose: each one a process group, read as it writes, stopped as a whole.

The programs the edge runs (git, the Claude Code CLI, Astro dev servers, npm,
astro build, ``node --version``, the flow-file writer, the doctor's checks) start through
:func:`start` (or :func:`run`), each in its own session, so it leads a process group
and stopping it reaches whatever it started (git-remote-https, esbuild, ...):
SIGTERM to the group, a grace period, then SIGKILL to the group, always
reaping the leader (:meth:`Child.stop`).

A child's helpers can keep its pipes open after it has exited, and one that
left the group can even outlive the SIGKILL. So no reader waits on a pipe for
ever: :meth:`Child.finish` kills the group when the output has not ended soon
after the leader's exit, and :meth:`Child.stop` closes our ends of the pipes
after a short linger.

Output is read as an async iterator (:meth:`Child.chunks`, :meth:`Child.lines`)
or handed to a callback by :func:`start`'s ``on_output``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Mapping, Sequence

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream, Process

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

DEFAULT_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PIPE_LINGER = 1.0  # seconds the readers get to finish once the group is gone, before our pipe ends are closed
REAP_TIMEOUT = 5.0  # seconds to wait for a SIGKILLed leader to be reaped

_SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")
_READ_ENDED = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError)

Output = Callable[[bytes], None]


class LineTooLong(ValueError):
    """A line longer than the reader's ``max_line`` (the child is not speaking the expected protocol)."""


def signal_group(pgid: int, sig: int) -> None:
    """Signal every process of the group ``pgid`` (ignored once the group is gone)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """``argv`` under util-linux's ``setpriv --pdeathsig KILL`` when it exists (anyio has no ``preexec_fn``)."""
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]


class Child:
    """One started child process group: its pipes, its exit, and how to stop it and what it started."""

    def __init__(self, process: Process, on_output: Output | None = None) -> None:
        self.process = process
        self.pid = process.pid
        self._pipes = [s for s in (process.stdout, process.stderr) if s is not None]
        self._reading: set[int] = set()  # id() of the pipes someone reads
        self._ended: set[int] = set()  # id() of those read to their end (or closed)
        self._progress = anyio.Event()
        self._pump: asyncio.Task[None] | None = None
        if on_output is not None:
            # The child outlives the call that started it (a dev server): its output is pumped in the background.
            self._reading.update(id(stream) for stream in self._pipes)
            self._pump = asyncio.ensure_future(self._deliver(on_output))

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def stdin(self) -> ByteSendStream | None:
        return self.process.stdin

    @property
    def stdout(self) -> ByteReceiveStream | None:
        return self.process.stdout

    @property
    def stderr(self) -> ByteReceiveStream | None:
        return self.process.stderr

    async def wait(self) -> int:
        """Wait for the leader to exit (not for its pipes: a helper may still hold them)."""
        return await self.process.wait()

    async def send_input(self, data: bytes) -> None:
        """Write ``data`` to stdin and close it; a child that stopped reading early is not an error."""
        stream = self.process.stdin
        assert stream is not None, "started without stdin=PIPE"
        try:
            await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, BrokenPipeError, ConnectionResetError):
            pass
        finally:
            await stream.aclose()

    # -- reading -----------------------------------------------------------------------------

    def chunks(self, stream: ByteReceiveStream) -> AsyncIterator[bytes]:
        """What the child writes to ``stream``, as it comes, until the pipe ends or :meth:`stop` closes it."""
        self._reading.add(id(stream))  # from now on (not the first step), :meth:`drained` waits for it
        return self._chunks(stream)

    async def _chunks(self, stream: ByteReceiveStream) -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        except _READ_ENDED:
            pass
        finally:  # read to its end, or no longer read by anyone (closed early)
            self._mark_ended(stream)

    def lines(self, stream: ByteReceiveStream, *, ends: bytes = b"\n", max_line: int | None = None) -> AsyncIterator[bytes]:
        """Each line the child writes to ``stream``, with its terminator (any byte of ``ends``); the last may have none.

        LineTooLong when a line grows past ``max_line`` bytes before it ends.
        """
        return self._lines(self.chunks(stream), ends, max_line)

    @staticmethod
    async def _lines(chunks: AsyncIterator[bytes], ends: bytes, max_line: int | None) -> AsyncIterator[bytes]:
        split = re.compile(b"[" + re.escape(ends) + b"]")
        buffer = bytearray()
        async with aclosing(chunks):  # closing the lines closes the chunks
            async for chunk in chunks:
                buffer += chunk
                start = 0
                while (found := split.search(buffer, start)) is not None:
                    yield bytes(buffer[start : found.end()])
                    start = found.end()
                del buffer[:start]
                if max_line is not None and len(buffer) > max_line:
                    raise LineTooLong(f"a line longer than {max_line} bytes")
        if buffer:
            yield bytes(buffer)

    async def _deliver(self, on_output: Output) -> None:
        """Hand stdout (and a separate stderr) to ``on_output``; an empty chunk at the end means "no more"."""
        try:
            async with anyio.create_task_group() as group:
                for stream in self._pipes:
                    group.start_soon(self._deliver_one, self.chunks(stream), on_output)
        finally:
            on_output(b"")

    @staticmethod
    async def _deliver_one(chunks: AsyncIterator[bytes], on_output: Output) -> None:
        async for chunk in chunks:
            on_output(chunk)

    def _mark_ended(self, stream: ByteReceiveStream) -> None:
        self._ended.add(id(stream))
        self._progress.set()
        self._progress = anyio.Event()

    @property
    def output_ended(self) -> bool:
        """Every pipe being read has been read to its end (or closed)."""
        return self._reading <= self._ended

    async def drained(self, timeout: float = PIPE_LINGER) -> bool:
        """Wait up to ``timeout`` until the output is read to its end (so its last words are in); whether it was."""
        with anyio.move_on_after(timeout):
            while not self.output_ended:
                await self._progress.wait()
        return self.output_ended

    # -- ending --------------------------------------------------------------------------------

    async def finish(self, linger: float = DEFAULT_GRACE) -> int:
        """Wait for the leader's exit and the end of its output; the exit status.

        Helpers it left behind (git-remote-https, a backgrounded tool) may keep
        the pipes open: ``linger`` seconds after the exit, the group is killed
        and our pipe ends are closed, so the readers end.
        """
        code = await self.wait()
        if not await self.drained(linger):
            signal_group(self.pid, signal.SIGKILL)
            if not await self.drained(PIPE_LINGER):
                await self._close_pipes()
        return code

    def signal_group(self, sig: int) -> None:
        """Signal every process of the group (ignored once the group is gone)."""
        signal_group(self.pid, sig)

    def kill_now(self) -> None:
        """Last resort from synchronous code (an exiting edge, a stuck thread): SIGKILL the group."""
        signal_group(self.pid, signal.SIGKILL)

    async def stop(self, grace: float = DEFAULT_GRACE) -> int | None:
        """SIGTERM to the group, SIGKILL after ``grace`` seconds; reaps the leader and ends the readers.

        The group is SIGKILLed at the end even when the leader exited in time,
        so helpers it left behind cannot linger. Shielded from cancellation
        (bounded by ``grace`` and a few seconds), so a cancelled caller still
        leaves nothing running.
        """
        with anyio.CancelScope(shield=True):  # no cancel scope cuts it short...
            stopping = asyncio.ensure_future(self._stop(grace))  # ...nor Task.cancel(): it is a task of its own
            cancelled = False
            while not stopping.done():
                try:
                    await asyncio.shield(stopping)
                except asyncio.CancelledError:
                    cancelled = True  # finish stopping first (a bounded wait), then pass the cancellation on
            if cancelled:
                raise asyncio.CancelledError
        return self.returncode

    async def _stop(self, grace: float) -> None:
        if self.returncode is None:
            self.signal_group(signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self.process.wait()
        self.signal_group(signal.SIGKILL)
        with anyio.move_on_after(REAP_TIMEOUT):
            await self.process.wait()
        await self.drained(PIPE_LINGER)
        await self._close_pipes()
        if self._pump is not None:
            with anyio.move_on_after(PIPE_LINGER):
                await asyncio.wait({self._pump})
            if not self._pump.done():
                self._pump.cancel()

    async def _close_pipes(self) -> None:
        """Close our ends of the pipes: a reader still waiting (a pipe held by an escaped helper) ends."""
        for stream in (self.process.stdin, *self._pipes):
            if stream is not None:
                try:
                    await stream.aclose()
                except (OSError, anyio.BrokenResourceError):
                    pass
        transport = getattr(self.process, "_transport", None)  # asyncio: the pipe transports hold the descriptors
        if transport is not None:
            for fd in (0, 1, 2):
                pipe = transport.get_pipe_transport(fd)
                if pipe is not None:
                    pipe.close()


async def start(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | None = DEVNULL,
    stdout: int | None = PIPE,
    stderr: int | None = PIPE,
    on_output: Output | None = None,
    die_with_parent: bool = False,
) -> Child:
    """Start ``argv`` (a list, never a shell string) as the leader of a new process group.

    ``on_output`` receives every chunk of stdout and stderr as it comes, then
    one empty chunk at the end. ``die_with_parent`` adds a parent-death signal
    (``setpriv``), so even a SIGKILLed edge leaves no such child behind.
    """
    command = _with_parent_death_signal(argv) if die_with_parent else list(argv)
    process = await anyio.open_process(
        command,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )
    return Child(process, on_output)


@dataclass(frozen=True)
class Completed:
    """A command that ran to its end."""

    returncode: int
    stdout: bytes
    stderr: bytes  # empty with stderr=STDOUT


async def run(
    argv: Sequence[str],
    *,
    timeout: float | None,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    stderr: int = PIPE,
    grace: float = DEFAULT_GRACE,
) -> Completed:
    """Run a command to its end and collect its output; TimeoutError (the group stopped) after ``timeout`` (None: no limit).

    A cancelled caller also stops the whole group.
    """
    child = await start(argv, cwd=cwd, env=env, stdin=PIPE if input is not None else DEVNULL, stderr=stderr)
    out, err = bytearray(), bytearray()

    async def collect(chunks: AsyncIterator[bytes], into: bytearray) -> None:
        async for chunk in chunks:
            into += chunk

    try:
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as group:
                if input is not None:
                    group.start_soon(child.send_input, input)
                for stream, into in ((child.stdout, out), (child.stderr, err)):
                    if stream is not None:
                        group.start_soon(collect, child.chunks(stream), into)
                code = await child.finish()
    finally:
        await child.stop(grace)
    return Completed(code, bytes(out), bytes(err))
