"""On demand through the edge, and no dev server outliving the edge."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from edge.server import start_edge
from preview import PREVIEWS, ThreadRef
from tests.conftest import free_port
from tests.fixtures_preview import group_gone, processes_in, with_settings
from tests.support.polling import wait_until

pytestmark = pytest.mark.astro


async def test_a_stopped_thread_starts_on_the_first_request(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()

    code, page, headers = await edge.get(f"/session/{thread.session_id}/", Accept="text/html")
    assert code == 503
    assert headers["Retry-After"] == "2"
    assert '<meta http-equiv="refresh"' in page
    assert "Starting preview" in page

    code, body, _ = await edge.get(f"/session/{thread.session_id}/", Accept="application/json")
    assert code in (200, 503)
    if code == 503:
        assert '"state": "starting"' in body

    page = ""

    async def ready() -> bool:
        nonlocal page
        code, page, _ = await edge.get(f"/session/{thread.session_id}/", Accept="text/html")
        assert code in (200, 503), page
        return code == 200

    await wait_until(ready, "the preview to be ready", 120, interval=0.25)
    assert "Welcome to Amelia" in page


async def test_concurrent_first_requests_start_one_dev_server(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()

    answers = await asyncio.gather(*(edge.get(f"/session/{thread.session_id}/") for _ in range(8)))

    assert {code for code, _, _ in answers} == {503}
    await edge.wait_state(thread.session_id, {"ready"})
    starts = [line for line in edge.supervisor.get(thread.session_id).log.tail(400) if "starting Astro" in line]
    assert len(starts) == 1


async def test_an_unknown_session_is_not_found(preview_edge):
    edge = await preview_edge()
    code, _, _ = await edge.get("/session/nosuchthread/", Accept="application/json")
    assert code == 404
    assert edge.supervisor.get("nosuchthread") is None


async def test_no_dev_server_outlives_the_app(settings, make_thread):
    threads = [make_thread("a"), make_thread("b")]
    running = await start_edge(with_settings(settings, port=0))
    try:
        supervisor = running.runner.app[PREVIEWS]
        async with aiohttp.ClientSession() as client:
            for thread in threads:
                async with client.post(f"http://127.0.0.1:{running.port}/api/astro/start/{thread.ids}") as resp:
                    assert resp.status == 200, await resp.text()
        pgids = [supervisor.status(thread.session_id)["pid"] for thread in threads]
        assert all(not group_gone(pgid) for pgid in pgids)
    finally:
        await running.runner.cleanup()
    assert all(group_gone(pgid) for pgid in pgids)


async def _edge_process(settings, thread_folder_env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {
        **dict(settings.child_env),
        "WORKSPACE_PATH": str(settings.workspace_path),
        "PORT": str(port),
        "ASTRO_PORT": str(settings.astro_port),
        "ASTRO_START_TIMEOUT": "90",
        **thread_folder_env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return process, port


async def _start_through(port: int) -> int:
    """Start thread t1 through a separately running edge; its dev server's pid."""
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            try:
                async with client.post(f"http://127.0.0.1:{port}/api/astro/start/c1/u1/t1") as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                    return body["pid"]
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    pytest.fail("the edge never answered")


@pytest.mark.parametrize("edge_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_no_dev_server_outlives_a_signalled_edge(settings, make_thread, edge_signal):
    make_thread("t1")
    settings = with_settings(settings)
    process, port = await _edge_process(settings, {})
    try:
        pid = await _start_through(port)
        assert not group_gone(pid)
        os.kill(process.pid, edge_signal)
        await asyncio.wait_for(process.wait(), 30)
        # SIGTERM: the edge stops its previews; SIGKILL: the parent-death signal ends node,
        # and node's helpers (esbuild) end when their pipe closes.
        await wait_until(lambda: group_gone(pid), "the dev server's process group to end", 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class OneThreadLocator:
    """A locator that knows one thread, under a session id of its own."""

    def __init__(self, folder: Path, session: str) -> None:
        self._folder, self._session = folder, session

    def session_id(self, thread: ThreadRef) -> str:
        return self._session

    def folder(self, session_id: str) -> Path | None:
        return self._folder if session_id == self._session else None


async def test_a_swapped_locator_maps_sessions_to_folders(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()
    edge.supervisor.locator = OneThreadLocator(thread.path, "t1-0123456789")

    status, body = await edge.api("POST", "start", thread)
    assert status == 200 and body["sessionId"] == "t1-0123456789", body
    code, page, _ = await edge.get("/session/t1-0123456789/")
    assert code == 200 and "Welcome to Amelia" in page
    code, _, _ = await edge.get(f"/session/{thread.session_id}/", Accept="application/json")
    assert code == 404  # the registry's mapping is gone


async def test_requests_during_a_stop_start_one_new_server_after_it(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()
    status, body = await edge.api("POST", "start", thread)
    assert status == 200, body
    supervisor = edge.supervisor
    preview = supervisor.get(thread.session_id)

    stopping = asyncio.create_task(supervisor.stop(thread.session_id, "test"))
    await asyncio.sleep(0)  # the stop begins: the old task is cancelled, its process still there
    assert preview.stopping
    # A browser's HMR client pings right away, and again: neither may start a second server.
    routes = [await supervisor.provide(thread.session_id), await supervisor.provide(thread.session_id)]
    assert {route.state.value for route in routes} == {"starting"}
    assert preview.task is None  # nothing started while the old process is still there
    await stopping

    status = await edge.wait_state(thread.session_id, {"ready", "failed"})
    assert status["state"] == "ready" and status["pid"] != body["pid"]
    assert group_gone(body["pid"])
    starts = [line for line in preview.log.tail(400) if "starting Astro" in line]
    assert len(starts) == 2
    assert {os.getpgid(pid) for pid in processes_in(thread.path)} == {status["pid"]}
