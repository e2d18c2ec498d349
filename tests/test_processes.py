"""The one subprocess helper (core.processes), with real processes: streaming, stopping a group, stray pipes."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import aclosing

import anyio
import pytest

from core import processes
from preview.procs import group_members
from tests.fixtures_preview import group_gone
from tests.support.polling import wait_until

PY = sys.executable
HANG_GUARD = 60  # a bug here would hang the test; this only turns a hang into a failure


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def test_output_is_streamed_line_by_line_while_the_child_runs():
    # The child writes its second line only after it has been answered: the first must arrive before the end.
    script = "import sys\nprint('one', flush=True)\nsys.stdin.readline()\nprint('two')\nsys.stdout.write('last, unterminated')"
    child = await processes.start([PY, "-c", script], stdin=processes.PIPE)
    try:
        with anyio.fail_after(HANG_GUARD):
            lines = child.lines(child.stdout)
            assert await lines.__anext__() == b"one\n"
            assert child.returncode is None
            await child.send_input(b"go on\n")
            assert [line async for line in lines] == [b"two\n", b"last, unterminated"]
            assert await child.finish() == 0
    finally:
        await child.stop()


async def test_a_reader_that_stops_early_is_not_waited_for():
    child = await processes.start([PY, "-c", "import time; print('result', flush=True); time.sleep(300)"])
    try:
        with anyio.fail_after(HANG_GUARD):
            async with aclosing(child.lines(child.stdout)) as lines:
                async for line in lines:
                    assert line == b"result\n"
                    break
            assert await child.drained(0)  # nobody reads stdout any more, though the child still holds it
    finally:
        await child.stop(grace=0)


async def test_the_output_callback_gets_every_chunk_then_an_empty_one():
    got: list[bytes] = []
    child = await processes.start(
        ["sh", "-c", "echo out; echo err >&2"], stderr=processes.STDOUT, on_output=got.append
    )
    with anyio.fail_after(HANG_GUARD):
        await child.wait()
        assert await child.drained(HANG_GUARD)
    await child.stop()
    assert got[-1] == b"" and b"".join(got) == b"out\nerr\n"


async def test_lines_can_end_at_carriage_returns_and_refuse_overlong_lines():
    child = await processes.start(["printf", "10%%\\r20%%\\rdone\\n"])
    with anyio.fail_after(HANG_GUARD):
        assert [line async for line in child.lines(child.stdout, ends=b"\r\n")] == [b"10%\r", b"20%\r", b"done\n"]
    await child.stop()
    child = await processes.start([PY, "-c", "print('x' * 100000)"])
    with anyio.fail_after(HANG_GUARD), pytest.raises(processes.LineTooLong):
        async for _ in child.lines(child.stdout, max_line=1000):
            pass
    await child.stop()


async def test_a_child_that_ignores_sigterm_gets_sigkill_with_its_whole_group():
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "helper = subprocess.Popen(['sleep', '300'])\n"
        "print(helper.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    child = await processes.start([PY, "-c", script])
    with anyio.fail_after(HANG_GUARD):
        helper = int(await child.lines(child.stdout).__anext__())
        assert set(group_members(child.pid)) >= {child.pid, helper}
        code = await child.stop(grace=0.5)
    assert code == -signal.SIGKILL
    await wait_until(lambda: group_gone(child.pid), "the helper to die with the group", HANG_GUARD)


async def test_a_child_that_honours_sigterm_exits_with_it():
    child = await processes.start([PY, "-c", "import time; print('up', flush=True); time.sleep(300)"])
    with anyio.fail_after(HANG_GUARD):
        await child.lines(child.stdout).__anext__()
        assert await child.stop(grace=HANG_GUARD) == -signal.SIGTERM


async def test_a_helper_in_the_group_holding_the_pipe_is_killed_once_the_leader_has_exited():
    # sh exits at once; its background sleep keeps stdout open.
    child = await processes.start(["sh", "-c", "sleep 300 & echo started"])
    read: list[bytes] = []

    async def reader() -> None:
        async for line in child.lines(child.stdout):
            read.append(line)

    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(reader)
                assert await child.finish(linger=0.5) == 0
    finally:
        await child.stop()
    assert read == [b"started\n"]
    await wait_until(lambda: group_gone(child.pid), "the helper holding the pipe to be killed", HANG_GUARD)


async def test_a_grandchild_that_left_the_group_and_holds_the_pipe_does_not_hang_the_stop():
    # The grandchild starts its own session, so no signal to our group reaches it; it inherits stdout.
    script = (
        "import subprocess, sys\n"
        "helper = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "print(helper.pid, flush=True)\n"
    )
    child = await processes.start([PY, "-c", script])
    escaped = 0

    async def reader() -> None:
        nonlocal escaped
        async for line in child.lines(child.stdout):
            escaped = int(line)

    try:
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as group:
                group.start_soon(reader)
                await child.wait()
                assert await child.stop() == 0  # the reader ends too: the task group can close
        assert escaped
        await wait_until(lambda: group_gone(child.pid), "the group to be gone", HANG_GUARD)
    finally:
        if escaped:
            _kill(escaped)


async def test_run_collects_output_and_feeds_input():
    with anyio.fail_after(HANG_GUARD):
        done = await processes.run(["sh", "-c", "cat; echo oops >&2; exit 3"], input=b"hello\n", timeout=HANG_GUARD)
    assert done == processes.Completed(3, b"hello\n", b"oops\n")
    with anyio.fail_after(HANG_GUARD):
        merged = await processes.run(["sh", "-c", "echo a; echo b >&2"], stderr=processes.STDOUT, timeout=HANG_GUARD)
    assert (merged.stdout, merged.stderr) == (b"a\nb\n", b"")


async def test_run_stops_the_whole_group_when_it_times_out(monkeypatch):
    script = "import subprocess, time\nprint(subprocess.Popen(['sleep', '300']).pid, flush=True)\ntime.sleep(300)"
    started: list[int] = []

    async def spy(argv, **kwargs):
        child = await real_start(argv, **kwargs)
        started.append(child.pid)
        return child

    real_start = processes.start
    monkeypatch.setattr(processes, "start", spy)
    with anyio.fail_after(HANG_GUARD), pytest.raises(TimeoutError):
        await processes.run([PY, "-c", script], timeout=1, grace=0.5)
    assert started
    await wait_until(lambda: group_gone(started[0]), "the timed-out group to be gone", HANG_GUARD)


async def test_a_cancelled_caller_leaves_nothing_running():
    child = await processes.start(["sh", "-c", "sleep 300 & sleep 300"])
    with anyio.move_on_after(0.2):
        try:
            await child.wait()
        finally:
            await child.stop(grace=0.5)
    assert child.returncode is not None
    await wait_until(lambda: group_gone(child.pid), "the cancelled child's group to be gone", HANG_GUARD)


async def test_a_missing_program_raises_oserror():
    with pytest.raises(OSError):
        await processes.start(["/nonexistent/program"])
