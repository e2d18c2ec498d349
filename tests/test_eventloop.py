"""EDGE_EVENT_LOOP: the edge serves on uvloop by default, on asyncio's loop when told (edge/eventloop.py)."""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import pytest

from edge import eventloop
from edge.settings import Settings, SettingsError
from tests.conftest import running_loop
from tests.test_shutdown import TOKEN, EdgeProcess

pytestmark = pytest.mark.timeout(120)


def test_uvloop_is_the_default_and_asyncio_can_be_chosen():
    assert Settings.from_env({}).event_loop == "uvloop"
    assert Settings.from_env({"EDGE_EVENT_LOOP": " AsyncIO "}).event_loop == "asyncio"
    with pytest.raises(SettingsError, match="EDGE_EVENT_LOOP"):
        Settings.from_env({"EDGE_EVENT_LOOP": "trio"})


def test_without_uvloop_the_edge_falls_back_to_asyncio(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    with caplog.at_level(logging.WARNING, logger="edge.eventloop"):
        kind, factory = eventloop.loop_factory("uvloop")
    assert kind == "asyncio" and factory is asyncio.new_event_loop
    assert "uvloop is not installed" in caplog.text


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_run_runs_on_the_named_loop(name):
    async def kind() -> str:
        return eventloop.running_loop()

    assert eventloop.run(kind(), name) == name


@pytest.mark.both_loops
async def test_both_loops_modules_really_run_on_each_loop(request):
    """The marker the transport suites use: its uvloop variant runs on uvloop (else it tests nothing new)."""
    wanted = "uvloop" if "uvloop" in request.node.callspec.id.split("-") else "asyncio"
    assert running_loop() == wanted
    assert eventloop.running_loop() == wanted


async def test_edge_serve_runs_on_uvloop_workers_too(tmp_path):
    edge = await EdgeProcess.start(tmp_path, EDGE_WORKERS="2")
    try:
        await edge.wait_for_log("[worker 1]: edge worker 1 serving")
        listening = next(line for line in edge.lines if "edge listening on" in line)
        assert "event loop uvloop" in listening
        worker = next(line for line in edge.lines if "edge worker 1 serving" in line)
        assert "(event loop uvloop)" in worker
        async with aiohttp.ClientSession() as client:
            for _ in range(4):  # SO_REUSEPORT spreads connections over both processes
                async with client.get(edge.url("/health"), headers={"Connection": "close"}) as resp:
                    assert resp.status == 200
        edge.proc.terminate()  # signal handlers on uvloop: a graceful stop
        assert await edge.exit_code() == 0
    finally:
        await edge.kill()


async def test_edge_serve_on_asyncio_when_told(tmp_path):
    edge = await EdgeProcess.start(tmp_path, EDGE_EVENT_LOOP="asyncio", EDGE_WORKERS="2")
    try:
        await edge.wait_for_log("[worker 1]: edge worker 1 serving")
        listening = next(line for line in edge.lines if "edge listening on" in line)
        assert "event loop asyncio" in listening
        assert "(event loop asyncio)" in next(line for line in edge.lines if "edge worker 1 serving" in line)
        async with aiohttp.ClientSession() as client:
            async with client.get(edge.url("/api/sessions"), headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
    finally:
        await edge.kill()
