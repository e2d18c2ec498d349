"""EDGE_WORKERS: more edge processes on one port (edge/workers.py, edge/worker.py).

The workers are real processes listening with SO_REUSEPORT; the kernel
decides which process accepts a connection, so the tests open enough
connections that both processes get some (the chance that one gets all 24 is
about one in eight million).
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace

import pytest

from edge import keys
from edge.fastpath import FAST_PATH
from edge.metrics import METRICS
from edge.server import start_edge
from edge.settings import Settings, SettingsError
from edge.workers import WORKERS
from tests.fixtures_claude import process_gone
from tests.support.polling import wait_until
from tests.support.rawhttp import open_raw, read_response, request
from tests.support.routes import add_route

# The main process on both loops (it adopts the workers' connections); the workers run on uvloop.
pytestmark = pytest.mark.both_loops

CONNECTIONS = 24


def worker_stats(app) -> dict:
    return app[WORKERS].health()[0]


async def get_and_post(port: int, n: int) -> list[tuple[int, bytes]]:
    """One connection: a GET (fast path), then a POST (aiohttp's path, in the main process)."""
    reader, writer = await open_raw(port)
    writer.write(request("GET", f"/session/s1/get{n}"))
    first = await read_response(reader)
    writer.write(request("POST", f"/session/s1/post{n}", headers={"Content-Length": "2"}, body=b"ok"))
    second = await read_response(reader)
    writer.close()
    assert first is not None and second is not None
    return [(first.status, first.body), (second.status, second.body)]


async def test_workers_share_the_port_and_the_main_process_keeps_the_rest(settings, recording_upstream):
    running = await start_edge(replace(settings, port=0, workers=2))
    app = running.runner.app
    pids = [w["pid"] for w in app[WORKERS].health()]
    try:
        assert len(pids) == 1 and not process_gone(pids[0])
        add_route(running.runner, "s1", recording_upstream.origin)
        await wait_until(lambda: worker_stats(app).get("routes") == 1, "the worker has the route", 10)
        answers = [await get_and_post(running.port, n) for n in range(CONNECTIONS)]
        assert answers == [[(200, f"GET /get{n} 0".encode()), (200, f"POST /post{n} 2".encode())] for n in range(CONNECTIONS)]
        by_main = app[FAST_PATH].proxied
        await wait_until(lambda: worker_stats(app).get("proxied", 0) + by_main == CONNECTIONS, "the worker's report", 10)
        stats = worker_stats(app)
        assert stats["proxied"] > 0 and by_main > 0  # both processes answered GETs
        assert stats["handedOver"] == stats["proxied"]  # each of the worker's POSTs went to the main process
        # The main process's metrics and activity include the worker's requests.
        registry = app[METRICS].registry
        await wait_until(
            lambda: registry.get_sample_value("edge_requests_total", {"route": "proxy", "code": "200"}) == 2 * CONNECTIONS,
            "every proxied request counted",
            10,
        )
        assert app[keys.SESSIONS].last_activity["s1"] > 0
        assert len([r for r in app[keys.PROXY_LOG].recent.records if r["session"] == "s1"]) == 2 * CONNECTIONS
        # A removed route is removed in the worker too.
        await app[keys.SESSIONS].remove("s1")
        await wait_until(lambda: worker_stats(app).get("routes") == 0, "the worker dropped the route", 10)
        for n in range(CONNECTIONS // 2):
            reader, writer = await open_raw(running.port)
            writer.write(request("GET", f"/session/s1/gone{n}"))
            response = await read_response(reader)
            writer.close()
            assert response is not None and response.status == 404
    finally:
        await running.runner.cleanup()
    assert process_gone(pids[0])


async def test_a_worker_that_dies_is_started_again(settings):
    running = await start_edge(replace(settings, port=0, workers=2))
    app = running.runner.app
    try:
        first = app[WORKERS].health()[0]["pid"]
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: [w["pid"] for w in app[WORKERS].health()] not in ([], [first]), "a new worker", 10)
        second = app[WORKERS].health()[0]["pid"]
        assert not process_gone(second)
        reader, writer = await open_raw(running.port)
        writer.write(request("GET", "/health"))
        assert (await read_response(reader)).status == 200
        writer.close()
    finally:
        await running.runner.cleanup()
    await asyncio.sleep(0)
    assert process_gone(second)


def test_edge_workers_is_checked():
    assert Settings.from_env({"EDGE_WORKERS": "2"}).workers == 2
    assert Settings.from_env({"EDGE_WORKERS": "auto"}).workers == len(os.sched_getaffinity(0))
    assert Settings.from_env({}).workers == 1
    for bad in ("0", "65", "two"):
        try:
            Settings.from_env({"EDGE_WORKERS": bad})
        except SettingsError as exc:
            assert "EDGE_WORKERS" in str(exc)
        else:
            raise AssertionError(f"EDGE_WORKERS={bad} was accepted")
