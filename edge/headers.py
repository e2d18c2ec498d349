"""How a client's headers become the upstream's, and the upstream's the client's.

This is the one place that knows the header rules (hop-by-hop removal, the
``Host`` rewrite Vite needs, ``X-Forwarded-*``, the edge's own cookie,
``Location`` rewriting). Every change is recorded on the flow for the log.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edge.flow import ProxyFlow
from edge.routing import SESSION_COOKIE, strip_session_cookie

# RFC 9110 §7.6.1 and the classic RFC 2616 list; plus names listed in Connection.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# The WebSocket client library makes its own handshake headers.
WEBSOCKET_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol", "sec-websocket-accept"}
)
WEBSOCKET_OWN = WEBSOCKET_HANDSHAKE | {"connection", "upgrade"}
FORWARDED = ("X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Prefix")


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    names: set[str] = set()
    for value in headers.getall("Connection", ()):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


@dataclass(frozen=True)
class Peer:
    """What the edge knows of the client: its address, and the public origin it used."""

    address: str
    trusted: bool  # a proxy in EDGE_TRUSTED_PROXIES (an ALB): its X-Forwarded-* are believed
    scheme: str
    host: str  # the public Host header value (with port, if any)
    port: str


def make_peer(
    remote: str | None,
    headers: CIMultiDictProxy[str],
    request_scheme: str,
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> Peer:
    address = remote or ""
    try:
        trusted = any(ipaddress.ip_address(address) in net for net in trusted_networks)
    except ValueError:
        trusted = False
    host = headers.get("Host", "")
    scheme = request_scheme
    if trusted and headers.get("X-Forwarded-Proto"):
        scheme = headers["X-Forwarded-Proto"].split(",")[0].strip().lower() or scheme
    if trusted and headers.get("X-Forwarded-Port"):
        port = headers["X-Forwarded-Port"].split(",")[0].strip()
    else:
        _, sep, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
        if not sep or not port.isdigit():
            port = "443" if scheme == "https" else "80"
    return Peer(address, trusted, scheme, host, port)


def upstream_request_headers(
    client: CIMultiDictProxy[str],
    target: URL,
    peer: Peer,
    prefix: str,
    flow: ProxyFlow,
    *,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """The headers sent upstream: Vite sees ``Host: 127.0.0.1:<port>``."""
    drop = HOP_BY_HOP | connection_listed(client)
    if websocket:
        drop = drop | WEBSOCKET_HANDSHAKE
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in client.items():
        lower = name.lower()
        if lower in drop:
            if not (websocket and lower in WEBSOCKET_OWN):
                flow.change("request", "removed", name, value)
            continue
        if lower == "host" or lower.startswith("x-forwarded-"):
            continue
        if lower == "cookie" and SESSION_COOKIE in value:
            kept = strip_session_cookie(value)
            if kept != value:
                flow.change("request", "rewritten" if kept else "removed", name, value, kept)
            if kept:
                out.add(name, kept)
            continue
        out.add(name, value)

    upstream_host = f"{target.host}:{target.port}"
    out["Host"] = upstream_host
    flow.change("request", "rewritten", "Host", peer.host or None, upstream_host)

    chain = client.get("X-Forwarded-For") if peer.trusted else None
    forwarded = {
        "X-Forwarded-For": f"{chain}, {peer.address}" if chain else peer.address,
        "X-Forwarded-Host": peer.host,
        "X-Forwarded-Proto": peer.scheme,
        "X-Forwarded-Port": peer.port,
    }
    if prefix:
        forwarded["X-Forwarded-Prefix"] = prefix
    for name in FORWARDED:
        old = client.get(name)
        new = forwarded.get(name)
        if new:
            out[name] = new
            if old != new:
                flow.change("request", "rewritten" if old else "added", name, old, new)
        elif old is not None:
            flow.change("request", "removed", name, old)
    return out


def client_response_headers(
    upstream: CIMultiDictProxy[str],
    target: URL,
    public_prefix: str,
    public_origin: str,
    flow: ProxyFlow,
) -> CIMultiDict[str]:
    """The headers sent to the client: hop-by-hop removed, ``Location`` made public."""
    drop = HOP_BY_HOP | connection_listed(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in drop:
            flow.change("response", "removed", name, value)
            continue
        if lower == "location":
            public = public_location(value, target, public_prefix, public_origin)
            if public != value:
                flow.change("response", "rewritten", name, value, public)
            out.add(name, public)
            continue
        out.add(name, value)
    return out


def public_location(location: str, target: URL, public_prefix: str, public_origin: str) -> str:
    """Rewrite a redirect so the browser stays on the edge (and under the session prefix).

    ``http://127.0.0.1:4321/x`` → ``<public origin><prefix>/x``; root-absolute
    ``/x`` → ``<prefix>/x``; relative and foreign locations are left alone.
    """
    upstream_origin = f"http://{target.host}:{target.port}"
    for origin in (upstream_origin, f"http://{target.host}"):
        if location == origin or location.startswith(origin + "/") or location.startswith(origin + "?"):
            rest = location[len(origin) :] or "/"
            if rest.startswith("?"):
                rest = "/" + rest
            return public_origin + public_prefix + rest
    if public_prefix and location.startswith("/") and not location.startswith("//"):
        if location == public_prefix or location.startswith(public_prefix + "/"):
            return location
        return public_prefix + location
    return location
