"""One proxied exchange's lifecycle, the same on every path (aiohttp's, the fast path, WebSockets).

:meth:`Exchanges.begin` when a request is routed to a ready session, and
:meth:`Exchange.end` when it is over, whoever proxies it. Between the two
the exchange holds everything the rest of the edge learns about it, in one
place and in one way:

- the flow record (:class:`edge.flow.ProxyFlow`) with the upstream URL, and
  its typed error kind, set where the error happens (:meth:`Exchange.fail`);
- idle accounting: a request in flight while it runs, activity of the edge
  and of the session at its start and its end (:mod:`edge.idle`);
- the proxy log's line and flow file at its end (:mod:`edge.proxylog`);
- metrics: the answered status, the time to the upstream's head and the
  error kind, counted in a :class:`Tally` of plain counts that is folded into
  the Prometheus series before each scrape (or sent on by a worker process),
  because updating those series per request costs more than the rest.

aiohttp's middlewares leave these requests to the exchange (see
:func:`edge.metrics.count_requests` and :func:`edge.idle.track_activity`).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import AsyncIterator, Callable

from aiohttp import web
from yarl import URL

from edge import keys
from edge.flow import Headers, ProxyFlow, UpstreamError
from edge.headers import Peer, upstream_host
from edge.idle import IDLE
from edge.routing import Match

# Latencies kept between two folds of a tally; a full list is folded at once.
MAX_LATENCIES = 2000
FOLD_SECONDS = 0.25  # how often a tally reaches the metrics without a scrape
NO_ANSWER = 502  # counted when an exchange ends without any status (the edge's own answer would be 502)


def upstream_url(target: URL, match: Match) -> str:
    """The URL the upstream is asked for: its own address, the raw path and query byte-identical."""
    return f"http://{upstream_host(target)}{match.upstream_path}"


class Tally:
    """The metrics of exchanges since the last fold, as plain counts (see :func:`edge.metrics.add_tally`)."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []

    def as_json(self) -> dict:
        """For a worker's report (:mod:`edge.worker`)."""
        return {"statuses": {str(s): n for s, n in self.statuses.items()}, "errors": dict(self.errors), "latencies": self.latencies}

    @classmethod
    def from_json(cls, data: dict) -> Tally:
        tally = cls()
        tally.statuses.update({int(s): n for s, n in data["statuses"].items()})
        tally.errors.update(data["errors"])
        tally.latencies = data["latencies"]
        return tally


class Exchanges:
    """An app's exchanges: where each one reports its start, its upstream's head and its end."""

    def __init__(self, app: web.Application, sink: Callable[[Tally], None] | None = None) -> None:
        self.app = app
        self.table = app[keys.SESSIONS]
        self.proxy_log = app[keys.PROXY_LOG]
        self.tally = Tally()
        self.sink = sink  # None: the owner takes ``tally`` itself (a worker process)

    def begin(
        self,
        match: Match,
        target: URL,
        peer: Peer,
        *,
        method: str,
        raw_path: str,
        http_version: str,
        headers: Headers,
    ) -> Exchange:
        """A request for a ready session starts its exchange: the session and the edge are active."""
        self.table.touch(match.session_id)
        flow = ProxyFlow(
            session_id=match.session_id,
            match=match.kind.value,
            method=method,
            raw_path=raw_path,
            http_version=http_version,
            client_addr=peer.address,
            client_headers=headers,
        )
        flow.upstream_url = upstream_url(target, match)
        watch = self.app.get(IDLE)
        if watch is not None:
            watch.in_flight += 1
            watch.note_proxied()
        return Exchange(self, flow)

    def fold(self) -> None:
        """Hand the tally to the metrics (before a scrape, a few times a second, or when its latencies are full)."""
        if self.sink is not None and (self.tally.statuses or self.tally.latencies):
            tally, self.tally = self.tally, Tally()
            self.sink(tally)

    async def folding(self, app: web.Application) -> AsyncIterator[None]:
        """A ``cleanup_ctx``: fold the tally a few times a second (one task, not work per request)."""

        async def run() -> None:
            while True:
                await asyncio.sleep(FOLD_SECONDS)
                self.fold()

        task = asyncio.create_task(run(), name="exchange metrics")
        yield
        task.cancel()
        self.fold()


class Exchange:
    """One exchange between :meth:`Exchanges.begin` and :meth:`end` (``flow`` is its record)."""

    __slots__ = ("flow", "_owner", "_ended")

    def __init__(self, owner: Exchanges, flow: ProxyFlow) -> None:
        self.flow = flow
        self._owner = owner
        self._ended = False

    def upstream_head(self) -> None:
        """The upstream's response head arrived: the time since the start is observed."""
        owner = self._owner
        if len(owner.tally.latencies) >= MAX_LATENCIES:
            owner.fold()  # a worker's tally waits for its report: more are not observed
        latencies = owner.tally.latencies
        if len(latencies) < MAX_LATENCIES:
            latencies.append(time.time() - self.flow.started)

    def fail(self, kind: UpstreamError | None, error: str, status: int | None = None) -> None:
        """Record a failure where it happens: for the log, its kind for metrics, and the status answered."""
        self.flow.fail(kind, error, status)

    def abandon(self) -> None:
        """The exchange is not over but handed to another path, which begins its own: not logged nor counted."""
        if not self._ended:
            self._ended = True
            self._release()

    def end(self, status: int | None = None) -> None:
        """The exchange is over (answered, failed, or the client left): log it, count it, the edge is idle again.

        ``status`` is what is counted when it is not the flow's own (499 for a client that left mid-answer).
        """
        if self._ended:
            return
        self._ended = True
        owner, flow = self._owner, self.flow
        flow.finish()
        owner.table.touch(flow.session_id)
        owner.proxy_log.flow_done(flow)
        tally = owner.tally
        tally.statuses[status or flow.status or NO_ANSWER] += 1
        if flow.error_kind is not None:
            tally.errors[flow.error_kind.value] += 1
        self._release()

    def _release(self) -> None:
        watch = self._owner.app.get(IDLE)
        if watch is not None:
            watch.in_flight -= 1
            watch.note_proxied()


EXCHANGES = web.AppKey("exchanges", Exchanges)


def setup(app: web.Application) -> Exchanges:
    """The app's exchanges, made once for every path (their tally has no sink until one is set)."""
    exchanges = app.get(EXCHANGES)
    if exchanges is None:
        exchanges = app[EXCHANGES] = Exchanges(app)
    return exchanges
