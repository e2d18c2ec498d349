"""Health checks: /health (JSON, for operators and load balancers) and /api/health (plain OK, for Hermes)."""

from __future__ import annotations

import aiohttp
from yarl import URL

from edge import __version__, keys
from edge.routing import Route, RouteState


async def test_health_reports_status_version_uptime_and_sessions(edge):
    server = await edge()
    table = server.app[keys.SESSIONS]
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/health")) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            before = await resp.json()
        assert before["status"] == "healthy"
        assert before["version"] == __version__
        assert isinstance(before["uptimeSeconds"], (int, float)) and before["uptimeSeconds"] >= 0
        assert (before["sessions"], before["previewsRunning"]) == (0, 0)

        table.set(Route("ready", URL("http://127.0.0.1:4321")))
        table.set(Route("starting", None, RouteState.STARTING))
        table.set(Route("failed", None, RouteState.FAILED))
        async with client.get(server.url("/health")) as resp:
            after = await resp.json()
        # Routes added through the API are sessions, not previews: no dev server runs.
        assert (after["sessions"], after["previewsRunning"]) == (3, 0)
        assert after["uptimeSeconds"] >= before["uptimeSeconds"]


async def test_api_health_is_plain_ok(edge):
    server = await edge()
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/api/health")) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            assert await resp.text() == "OK"
        async with client.head(server.url("/api/health")) as resp:
            assert resp.status == 200
