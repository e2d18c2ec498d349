"""Graceful stop of a real ``python -m edge serve`` process on SIGTERM, and the stop order in process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from control.workspaces import WORKSPACES
from edge import stopping
from edge.server import start_edge
from preview.appkeys import PREVIEWS
from tests.conftest import free_port
from tests.support.polling import wait_until
from tests.support.rawhttp import refused
from tests.support.routes import add_route, post_route
from tests.support.websocket import PROTOCOLS, WsUpstream

TOKEN = "shutdown-token"
WAIT = 30.0
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(180)


class EdgeProcess:
    """``python -m edge serve`` on a free port, its stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, tmp_path: Path, **env: str) -> "EdgeProcess":
        port = free_port()
        base = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge", "serve",
            cwd=REPO,
            env={
                **base,
                "PORT": str(port),
                "EDGE_HOST": "127.0.0.1",
                "EDGE_API_TOKEN": TOKEN,
                "WORKSPACE_PATH": str(tmp_path / "workspace"),
                "AUTO_SHUTDOWN_MINUTES": "0",
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        edge = cls(proc, port)
        await edge.wait_for_log("edge listening on")
        return edge

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            async with self._changed:
                self.lines.append(line.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self.lines.append("<eof>")
            self._changed.notify_all()

    async def wait_for_log(self, text: str) -> None:
        async def seen() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: any(text in line for line in self.lines) or "<eof>" in self.lines)
            assert any(text in line for line in self.lines), "\n".join(self.lines)

        await asyncio.wait_for(seen(), WAIT)

    async def exit_code(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), WAIT)
        await asyncio.wait_for(self._reader, WAIT)
        return code

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


@pytest.fixture
async def run_edge(tmp_path):
    started: list[EdgeProcess] = []

    async def start(**env: str) -> EdgeProcess:
        edge = await EdgeProcess.start(tmp_path, **env)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        await edge.kill()


class Streamer:
    """An upstream that sends the first part of a body, then the rest once released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.finished = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/stream", self.stream)
        return app

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"first part\n")
        await self.release.wait()
        for index in range(5):
            await response.write(f"more {index}\n".encode())
        await response.write_eof()
        self.finished.set()
        return response


FULL_BODY = b"first part\n" + b"".join(f"more {i}\n".encode() for i in range(5))


@pytest.fixture
async def streamer(serve):
    """A :class:`Streamer` upstream (``.origin``); released at the end so the upstream server can stop."""
    streamer = Streamer()
    streamer.origin = (await serve(streamer.app())).origin  # type: ignore[attr-defined]
    yield streamer
    streamer.release.set()


async def test_sigterm_lets_a_streamed_response_finish_then_exits_0(run_edge, streamer):
    edge = await run_edge(EDGE_DRAIN_SECONDS="20")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
        await post_route(edge.url(""), "s1", streamer.origin, token=TOKEN, client=client)
        async with client.get(edge.url("/session/s1/stream")) as resp:
            assert resp.status == 200
            assert await resp.content.readline() == b"first part\n"
            edge.proc.send_signal(signal.SIGTERM)
            await edge.wait_for_log("edge stopping")
            # No new connections while draining.
            await wait_until(lambda: refused(edge.port), "the edge to refuse new connections", WAIT)
            assert edge.proc.returncode is None
            streamer.release.set()
            assert b"first part\n" + await resp.content.read() == FULL_BODY
    assert await edge.exit_code() == 0
    assert any("edge stopped" in line for line in edge.lines)


async def test_sigterm_closes_open_websockets_with_1001(run_edge, serve):
    recorder = WsUpstream()
    upstream = await serve(recorder.app())
    edge = await run_edge(EDGE_DRAIN_SECONDS="20")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
        await post_route(edge.url(""), "s1", upstream.origin, token=TOKEN, client=client)
        async with client.ws_connect(edge.url("/session/s1/"), protocols=PROTOCOLS, origin=edge.url("")) as ws:
            await ws.send_str("hi")
            assert (await ws.receive(timeout=WAIT)).data == "hi"
            edge.proc.send_signal(signal.SIGTERM)
            msg = await ws.receive(timeout=WAIT)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    assert await edge.exit_code() == 0
    await asyncio.wait_for(recorder.ended.wait(), WAIT)
    assert recorder.closes == [(1001, "edge shutting down")]


async def test_a_second_sigterm_exits_at_once(run_edge, streamer):
    """The stream is never released: the drain would last the full minute."""
    edge = await run_edge(EDGE_DRAIN_SECONDS="60")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
        await post_route(edge.url(""), "s1", streamer.origin, token=TOKEN, client=client)
        async with client.get(edge.url("/session/s1/stream")) as resp:
            assert await resp.content.readline() == b"first part\n"
            edge.proc.send_signal(signal.SIGTERM)
            await edge.wait_for_log("edge stopping")
            edge.proc.send_signal(signal.SIGTERM)
            assert await edge.exit_code() == 128 + signal.SIGTERM
    assert any("second SIGTERM" in line for line in edge.lines)
    assert not any("edge stopped" in line for line in edge.lines)


async def test_sigint_stops_gracefully_too(run_edge):
    edge = await run_edge()
    edge.proc.send_signal(signal.SIGINT)
    assert await edge.exit_code() == 0


async def test_running_work_drains_within_the_budget_before_dev_servers_stop(settings):
    """In process: a registered drain gets what is left of EDGE_DRAIN_SECONDS, before the supervisor closes."""
    running = await start_edge(replace(settings, port=0, drain_seconds=1))
    app = running.runner.app
    assert app[WORKSPACES].drain in app[stopping.STOPPING].drains  # git operations are waited for too
    seen: dict[str, object] = {}
    work = asyncio.create_task(asyncio.sleep(3600))

    async def drain(timeout: float) -> None:
        seen["timeout"] = timeout
        seen["supervisor_closing"] = app[PREVIEWS]._closing
        await asyncio.wait({work}, timeout=timeout)
        work.cancel()

    stopping.add_drain(app, drain)
    await asyncio.wait_for(running.runner.cleanup(), WAIT)
    assert 0 < seen["timeout"] <= 1  # type: ignore[operator]
    assert seen["supervisor_closing"] is False  # dev servers stop after running work
    assert work.cancelled()
    assert app[stopping.STOPPING].deadline is not None


async def test_the_budget_is_shared_with_requests_in_flight(settings, streamer):
    """Work drained after a slow request gets only what is left of the budget, so the stop stays bounded."""
    running = await start_edge(replace(settings, port=0, drain_seconds=2))
    app = running.runner.app
    add_route(app, "s1", streamer.origin)
    budgets: list[float] = []

    async def drain(timeout: float) -> None:
        budgets.append(timeout)

    stopping.add_drain(app, drain)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
        async with client.get(f"http://127.0.0.1:{running.port}/session/s1/stream") as resp:
            assert await resp.content.readline() == b"first part\n"
            cleanup = asyncio.create_task(running.runner.cleanup())  # the stream is never released
            with pytest.raises(aiohttp.ClientError):
                await resp.content.read()  # cut when the drain ends
            await asyncio.wait_for(cleanup, WAIT)
    assert budgets and budgets[0] < 2
