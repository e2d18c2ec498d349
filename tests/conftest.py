"""Shared fixtures: a real edge listening on 127.0.0.1, and real upstream servers.

Topic-specific fixtures live in ``tests/fixtures_*.py`` modules listed in
``pytest_plugins`` below.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from typing import AsyncIterator, Awaitable, Callable

import pytest
import uvloop
from aiohttp import web

from edge.proxylog import ProxyLog
from edge.server import start_edge
from edge.settings import Settings
from tests.support.upstreams import RecordingUpstream

pytest_plugins: list[str] = ["tests.fixtures_astro", "tests.fixtures_browser", "tests.fixtures_preview", "tests.fixtures_git", "tests.fixtures_dynamodb", "tests.fixtures_claude"]


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (tests never use fixed ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """An aiohttp app served on 127.0.0.1 for the length of a test."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port
        self.app = runner.app

    @property
    def host(self) -> str:
        """The ``Host`` a client sends to this server."""
        return f"127.0.0.1:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.host}"

    def url(self, path: str = "/") -> str:
        return self.origin + path


async def serve_app(app: web.Application, **runner_kwargs) -> RunningServer:
    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return RunningServer(runner, port)


@pytest.fixture
def fast_path(request: pytest.FixtureRequest) -> bool:
    """Whether the edge starts with its fast path (``EDGE_FAST_PATH``); both in modules marked ``both_paths``."""
    return getattr(request, "param", True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_paths") and "fast_path" in metafunc.fixturenames:
        metafunc.parametrize("fast_path", [True, False], ids=["fast", "aiohttp"], indirect=True)


# The event loops a test runs on: asyncio's, and in modules marked ``both_loops`` also
# uvloop's (the edge's default, EDGE_EVENT_LOOP), for the code that works on transports directly.
ASYNCIO_ONLY = {"asyncio": asyncio.new_event_loop}
BOTH_LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's hook: each async test in a ``both_loops`` module runs once per loop."""
    return BOTH_LOOPS if item.get_closest_marker("both_loops") else ASYNCIO_ONLY


def running_loop() -> str:
    """``uvloop`` or ``asyncio``: the loop the test runs on (and the edge it starts with it)."""
    return "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"


@pytest.fixture
def settings(tmp_path, fast_path: bool) -> Settings:
    """Embedded defaults, with the workspace in the test's temporary folder."""
    return replace(Settings.from_env({}), workspace_path=tmp_path / "workspace", port=free_port(), fast_path=fast_path)


ServeFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def serve() -> AsyncIterator[ServeFactory]:
    """Serve any aiohttp app (an upstream) on 127.0.0.1; stopped after the test."""
    started: list[RunningServer] = []

    async def start(app: web.Application, **runner_kwargs) -> RunningServer:
        server = await serve_app(app, **runner_kwargs)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.runner.cleanup()


@pytest.fixture
async def edge(settings: Settings, serve: ServeFactory) -> AsyncIterator[Callable[..., Awaitable[RunningServer]]]:
    """Start a real edge exactly as ``edge serve`` does (``start_edge``: all server limits), on a free port.

    It depends on ``serve`` so that edges stop before the upstreams they proxy to.
    """
    started: list[RunningServer] = []

    async def start(proxy_log: ProxyLog | None = None, **overrides) -> RunningServer:
        running = await start_edge(replace(settings, **{"port": 0, **overrides}), proxy_log=proxy_log)
        server = RunningServer(running.runner, running.port)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.runner.cleanup()


@pytest.fixture
async def recording_upstream(serve: ServeFactory) -> RecordingUpstream:
    """A :class:`RecordingUpstream` served on 127.0.0.1 (``.origin``)."""
    upstream = RecordingUpstream()
    upstream.origin = (await serve(upstream.app())).origin
    return upstream
