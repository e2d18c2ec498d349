"""Prometheus metrics of one edge: ``GET /metrics`` (behind the API token when one is set).

Each app has its own ``CollectorRegistry`` (tests run several edges in one
process). The proxy is the hot path, so a proxied exchange is counted by its
lifecycle (:mod:`edge.exchange`) in plain counts folded in before each
scrape, on every path alike; other requests by the outermost middleware.
Gauges (open WebSockets, previews by state) are read only when scraped.

Other modules report through small hooks that do nothing when metrics are
not set up: :func:`observe_execution` (Claude executors) and
:func:`observe_git` (wired to the control API's git runner in :func:`setup`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.flow import UpstreamError
from edge import reserved
from edge.health import HEALTH_FIELDS
from edge.websocket import SOCKETS

if TYPE_CHECKING:
    from edge.exchange import Tally

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Route classes of edge_requests_total.
PROXY, API, HEALTH, METRICS_ROUTE, OTHER = "proxy", "api", "health", "metrics", "other"
# The proxy marks the requests it handles (host, prefix or cookie routed) with this key.
ROUTE_CLASS = web.RequestKey("route_class", str)
# Set on a request whose exchange counts itself (edge.exchange): the middleware leaves it.
COUNTED = web.RequestKey("counted_by_exchange", bool)

UPSTREAM_ERROR_KINDS = tuple(kind.value for kind in UpstreamError)
CLIENT_CLOSED = 499  # nginx's code for a client that went away before the answer
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EXECUTION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


class _PreviewStates(Collector):
    """``edge_previews{state}`` from the supervisor's counts (the same numbers as ``/health``)."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily("edge_previews", "Previews by state.", labels=["state"])]

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("edge_previews", "Previews by state.", labels=["state"])
        counts = self._app.get(HEALTH_FIELDS, {}).get("previews")
        if counts is not None:
            for state, number in counts().items():
                family.add_metric([state], number)
        yield family


class EdgeMetrics:
    """The series of one edge app, in a registry of its own."""

    def __init__(self, app: web.Application) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "edge_requests", "Requests answered, by route class and status code.", ["route", "code"], registry=registry
        )
        self.upstream_latency = Histogram(
            "edge_upstream_response_seconds",
            "Time from forwarding a request to the upstream's response head.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "edge_upstream_errors", "Upstream failures, by kind.", ["kind"], registry=registry
        )
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        websockets = Gauge("edge_websockets_open", "WebSockets relayed right now.", registry=registry)
        websockets.set_function(lambda: app[SOCKETS].count())
        self.executions = Counter(
            "edge_executions", "Executions (Claude runs), by mode and outcome.", ["mode", "outcome"], registry=registry
        )
        self.execution_seconds = Histogram(
            "edge_execution_duration_seconds",
            "How long executions took, by mode.",
            ["mode"],
            buckets=EXECUTION_BUCKETS,
            registry=registry,
        )
        self.git = Counter(
            "edge_git_operations", "git commands run by the control API, by command and outcome.", ["operation", "outcome"],
            registry=registry,
        )
        registry.register(_PreviewStates(app))
        ProcessCollector(registry=registry)
        self._request_series: dict[tuple[str, int], object] = {}

    def request_done(self, route: str, status: int, count: int = 1) -> None:
        series = self._request_series.get((route, status))
        if series is None:
            series = self._request_series[(route, status)] = self.requests.labels(route, str(status))
        series.inc(count)  # type: ignore[attr-defined]


METRICS = web.AppKey("metrics", EdgeMetrics)
SCRAPE_HOOKS = web.AppKey("metrics_scrape_hooks", list)


def route_class(request: web.Request) -> str:
    marked = request.get(ROUTE_CLASS)
    if marked is not None:
        return marked
    row = reserved.lookup(request.path)
    return OTHER if row is None else row.metric


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route class and status (the outermost middleware: refusals count too).

    A proxied exchange counts itself when it ends (:mod:`edge.exchange`), as on the fast path.
    """
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        metrics = request.app.get(METRICS)
        if metrics is not None and not request.get(COUNTED):
            metrics.request_done(route_class(request), status)


def mark_proxied(request: web.Request) -> None:
    """The proxy handles this request (whatever its path): count it as ``proxy``."""
    request[ROUTE_CLASS] = PROXY


def add_tally(app: web.Application, tally: Tally) -> None:
    """Proxied exchanges (:mod:`edge.exchange`), of this process or a worker process."""
    metrics = app.get(METRICS)
    if metrics is None:
        return
    for status, count in tally.statuses.items():
        metrics.request_done(PROXY, status, count)
    for seconds in tally.latencies:
        metrics.upstream_latency.observe(seconds)
    for kind, count in tally.errors.items():
        metrics.upstream_errors.labels(kind).inc(count)


def before_scrape(app: web.Application, hook: Callable[[], None]) -> None:
    """Run ``hook`` before each ``GET /metrics`` (to fold in what is counted elsewhere)."""
    app.setdefault(SCRAPE_HOOKS, []).append(hook)


def observe_execution(app: web.Application, mode: str, ok: bool, seconds: float) -> None:
    """Record one finished execution (``mode``: a small fixed set, never user input)."""
    metrics = app.get(METRICS)
    if metrics is not None:
        metrics.executions.labels(mode, "ok" if ok else "failed").inc()
        metrics.execution_seconds.labels(mode).observe(seconds)


def observe_git(app: web.Application, operation: str, ok: bool) -> None:
    """Record one git command (``operation``: git's subcommand, chosen by the code)."""
    metrics = app.get(METRICS)
    if metrics is not None:
        metrics.git.labels(operation, "ok" if ok else "failed").inc()


async def metrics_page(request: web.Request) -> web.Response:
    for hook in request.app.get(SCRAPE_HOOKS, []):
        hook()
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    """Create the app's metrics, add ``GET /metrics`` and hook the control API's git runner and Claude runs."""
    from control.runs import RUNNER
    from control.workspaces import WORKSPACES

    app[METRICS] = EdgeMetrics(app)
    app.router.add_get("/metrics", metrics_page)
    workspaces = app.get(WORKSPACES)
    if workspaces is not None:
        workspaces.git.observer = lambda operation, ok: observe_git(app, operation, ok)
    runner = app.get(RUNNER)
    if runner is not None:
        runner.observer = lambda mode, ok, seconds: observe_execution(app, mode, ok, seconds)
