"""One proxied exchange's lifecycle, the same on every path (aiohttp's, the fast path, WebSockets).

:func:`begin` when a request is routed to a ready session: the session is
active, and the flow records the request and the upstream URL. :func:`end`
when it is over: the flow is finished, the session active again, and the
proxy log (JSON line, flow file) gets it. Counting it in the metrics stays
with each path (aiohttp's middleware; the fast path's batched tally), as
does idle accounting of requests in flight.
"""

from __future__ import annotations

from yarl import URL

from edge.flow import Headers, ProxyFlow
from edge.headers import Peer, upstream_host
from edge.proxylog import ProxyLog
from edge.routing import Match, SessionTable


def upstream_url(target: URL, match: Match) -> str:
    """The URL the upstream is asked for: its own address, the raw path and query byte-identical."""
    return f"http://{upstream_host(target)}{match.upstream_path}"


def begin(
    table: SessionTable,
    match: Match,
    target: URL,
    peer: Peer,
    *,
    method: str,
    raw_path: str,
    http_version: str,
    headers: Headers,
) -> ProxyFlow:
    """A request for a ready session starts its exchange."""
    table.touch(match.session_id)
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
    return flow


def end(table: SessionTable, proxy_log: ProxyLog, flow: ProxyFlow) -> None:
    """The exchange is over (answered, failed, or the client left): record it."""
    flow.finish()
    table.touch(flow.session_id)
    proxy_log.flow_done(flow)
