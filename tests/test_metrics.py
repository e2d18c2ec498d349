"""``GET /metrics``: Prometheus series of real proxied traffic, upstream failures, hooks and gauges."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from control.gitcmd import GitError
from control.workspaces import WORKSPACES
from edge import metrics
from tests.conftest import free_port
from tests.support.routes import add_route
from tests.support.upstreams import canned, raw_upstream, upstream_app
from tests.support.websocket import PROTOCOLS, WsUpstream

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT = aiohttp.ClientTimeout(total=30)

pytestmark = pytest.mark.timeout(120)


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: aiohttp.ClientSession, server) -> dict:
    async with client.get(server.url("/metrics"), headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(await resp.text())


@pytest.fixture
async def traffic(edge, serve):
    """An edge with sessions: ok (a real upstream), dead (nothing listens), slow, broken (a cut body), ws."""
    upstream = await serve(upstream_app())
    broken = await raw_upstream(canned(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of it"))
    recorder = WsUpstream()
    ws_upstream = await serve(recorder.app())
    server = await edge(api_token=TOKEN, first_byte_timeout=1.0)
    add_route(server, "ok", upstream.origin)
    add_route(server, "dead", f"http://127.0.0.1:{free_port()}")
    add_route(server, "broken", broken.origin)
    add_route(server, "ws", ws_upstream.origin)
    yield server
    await broken.close()


async def test_proxied_requests_and_upstream_errors_are_counted(traffic):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for _ in range(3):
            async with client.get(traffic.url("/session/ok/page")) as resp:
                assert resp.status == 200
        async with client.get(traffic.url("/session/ok/status/404")) as resp:
            assert resp.status == 404
        async with client.get(traffic.url("/session/dead/")) as resp:
            assert resp.status == 502
        async with client.get(traffic.url("/session/ok/hang")) as resp:
            assert resp.status == 504
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(traffic.url("/session/broken/")) as resp:
                await resp.read()
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await client.ws_connect(traffic.url("/session/ws/status/403"), protocols=PROTOCOLS)
        async with client.get(traffic.url("/session/nobody/")) as resp:
            assert resp.status == 404
        samples = await scrape(client, traffic)

    requests = "edge_requests_total"
    assert value(samples, requests, route="proxy", code="200") == 4  # three pages and the cut one
    assert value(samples, requests, route="proxy", code="404") == 2  # the upstream's 404, the unknown session
    assert value(samples, requests, route="proxy", code="502") == 1
    assert value(samples, requests, route="proxy", code="504") == 1
    assert value(samples, requests, route="proxy", code="403") == 1
    assert value(samples, "edge_upstream_response_seconds_count") == 5  # heads that arrived
    assert value(samples, "edge_upstream_response_seconds_bucket", le="+Inf") == 5
    assert value(samples, "edge_upstream_response_seconds_sum") > 0
    for kind in ("connect", "timeout", "reset", "handshake"):
        assert value(samples, "edge_upstream_errors_total", kind=kind) == 1, kind


async def test_edge_routes_are_counted_by_class(traffic):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        async with client.get(traffic.url("/health")) as resp:
            assert resp.status == 200
        async with client.get(traffic.url("/api/health")) as resp:
            assert resp.status == 200
        async with client.get(traffic.url("/api/routes"), headers=AUTH) as resp:
            assert resp.status == 200
        async with client.get(traffic.url("/api/routes")) as resp:
            assert resp.status == 401
        async with client.get(traffic.url("/metrics")) as resp:
            assert resp.status == 401
        async with client.get(traffic.url("/nothing-here")) as resp:
            assert resp.status == 404
        async with client.get(traffic.url("/health"), headers={"Host": "unknown.example"}) as resp:
            assert resp.status == 200  # health answers any host
        await scrape(client, traffic)
        samples = await scrape(client, traffic)

    requests = "edge_requests_total"
    assert value(samples, requests, route="health", code="200") == 3
    assert value(samples, requests, route="api", code="200") == 1
    assert value(samples, requests, route="api", code="401") == 1
    assert value(samples, requests, route="metrics", code="401") == 1
    assert value(samples, requests, route="metrics", code="200") == 1  # the first scrape
    assert value(samples, requests, route="other", code="404") == 1


async def test_gauges_read_websockets_and_previews(traffic):
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        assert value(await scrape(client, traffic), "edge_websockets_open") == 0
        async with client.ws_connect(traffic.url("/session/ws/"), protocols=PROTOCOLS) as ws:
            await ws.send_str("x")
            assert (await ws.receive(timeout=10)).data == "x"
            samples = await scrape(client, traffic)
            assert value(samples, "edge_websockets_open") == 1
    states = {dict(labels)["state"] for name, labels in samples if name == "edge_previews"}
    assert {"stopped", "starting", "ready", "failed"} <= states
    assert value(samples, "edge_previews", state="ready") == 0
    assert value(samples, "process_open_fds") > 0


async def test_execution_and_git_hooks(traffic, tmp_path):
    app = traffic.app
    metrics.observe_execution(app, "cli", True, 12.5)
    metrics.observe_execution(app, "cli", False, 0.5)
    git = app[WORKSPACES].git
    await git.run(["init", "-q", str(tmp_path / "repo")], tmp_path)  # real git through the control API's runner
    with pytest.raises(GitError):
        await git.run(["rev-parse", "HEAD"], tmp_path / "repo")  # no commit yet: fails
    await git.run(["rev-parse", "--verify", "HEAD"], tmp_path / "repo", check=False)  # an expected answer, not a failure
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        samples = await scrape(client, traffic)
    assert value(samples, "edge_executions_total", mode="cli", outcome="ok") == 1
    assert value(samples, "edge_executions_total", mode="cli", outcome="failed") == 1
    assert value(samples, "edge_execution_duration_seconds_count", mode="cli") == 2
    assert value(samples, "edge_execution_duration_seconds_sum", mode="cli") == 13.0
    assert value(samples, "edge_git_operations_total", operation="init", outcome="ok") == 1
    assert value(samples, "edge_git_operations_total", operation="rev-parse", outcome="failed") == 1
    assert value(samples, "edge_git_operations_total", operation="rev-parse", outcome="ok") == 1


async def test_each_app_has_its_own_registry(edge, serve):
    upstream = await serve(upstream_app())
    first, second = await edge(api_token=TOKEN), await edge(api_token=TOKEN)
    for server in (first, second):
        add_route(server, "ok", upstream.origin)
    async with aiohttp.ClientSession(timeout=WAIT) as client:
        for _ in range(2):
            async with client.get(first.url("/session/ok/")) as resp:
                assert resp.status == 200
        one, two = await scrape(client, first), await scrape(client, second)
    assert value(one, "edge_requests_total", route="proxy", code="200") == 2
    assert value(two, "edge_requests_total", route="proxy", code="200") == 0
