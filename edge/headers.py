"""How a client's headers become the upstream's, and the upstream's the client's.

This is the one place that knows the header rules (hop-by-hop removal, the
``Host`` rewrite Vite needs, ``X-Forwarded-*``, the edge's own cookie,
``Location`` rewriting). Every change is recorded on the flow for the log.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edge.flow import ProxyFlow
from edge.routing import SESSION_COOKIE, Match, MatchKind, cookie_session, strip_session_cookie

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
# Request headers that end at the edge: the edge itself answered `Expect: 100-continue`.
REQUEST_ONLY = frozenset({"expect"})
REQUEST_DROP = HOP_BY_HOP | REQUEST_ONLY


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    names: set[str] = set()
    for value in headers.getall("Connection", ()):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


class Peer(NamedTuple):
    """What the edge knows of the client: its address, and the public origin it used (one per request)."""

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
    """Who is asking, and by which public origin; ``X-Forwarded-*`` believed only from trusted proxies."""
    address = remote or ""
    trusted = bool(trusted_networks) and is_trusted(address, trusted_networks)
    host = headers.get("Host", "")
    scheme = request_scheme
    port = ""
    if trusted:
        proto = _first(headers.get("X-Forwarded-Proto")).lower()
        scheme = proto if proto in ("http", "https") else scheme
        forwarded_port = _first(headers.get("X-Forwarded-Port"))
        port = forwarded_port if forwarded_port.isdigit() else ""
    if not port:
        _, sep, host_port = host.rpartition(":")
        port = host_port if sep and host_port.isdigit() else ("443" if scheme == "https" else "80")
    return Peer(address, trusted, scheme, host, port)


_TRUST_CACHE: dict[tuple[str, int], tuple[object, bool]] = {}


def is_trusted(address: str, trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """Whether ``address`` is in a trusted network.

    Cached per address and networks tuple (clients reuse their address); keyed by
    the tuple's identity, checked on use, because hashing network objects costs
    more than the check itself.
    """
    key = (address, id(trusted_networks))
    cached = _TRUST_CACHE.get(key)
    if cached is not None and cached[0] is trusted_networks:
        return cached[1]
    try:
        ip = ipaddress.ip_address(address)
        trusted = any(ip in net for net in trusted_networks)
    except ValueError:
        trusted = False
    if len(_TRUST_CACHE) >= 1024:
        _TRUST_CACHE.clear()
    _TRUST_CACHE[key] = (trusted_networks, trusted)
    return trusted


def client_address(
    remote: str,
    forwarded_for: list[str] | tuple[str, ...],
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> str:
    """The client's address: the nearest ``X-Forwarded-For`` entry not a trusted proxy, when ``remote`` is one."""
    address = remote
    if not forwarded_for or not trusted_networks or not is_trusted(remote, trusted_networks):
        return address
    for entry in reversed(",".join(forwarded_for).split(",")):
        entry = entry.strip()
        if not entry:
            continue
        address = entry
        if not is_trusted(entry, trusted_networks):
            break
    return address


def _first(value: str | None) -> str:
    """The first (client-side) entry of a comma-separated forwarding header."""
    return (value or "").split(",", 1)[0].strip()


def upstream_host(target: URL) -> str:
    """The ``Host`` the upstream gets: its own address (Vite allows IP literals)."""
    return f"{target.host_subcomponent}:{target.port}"


def upstream_request_headers(
    client: CIMultiDictProxy[str],
    target: URL,
    peer: Peer,
    prefix: str,
    flow: ProxyFlow,
    *,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """The headers sent upstream: Vite sees ``Host: 127.0.0.1:<port>``.

    Hop-by-hop headers (and any named in ``Connection``) and the edge's own
    cookie are removed; ``X-Forwarded-*`` are rebuilt, extending the client's
    ``X-Forwarded-For`` chain only when the peer is a trusted proxy.
    """
    listed = connection_listed(client)
    drop = (REQUEST_DROP | listed) if listed else REQUEST_DROP
    if websocket:
        drop = drop | WEBSOCKET_HANDSHAKE
    out: CIMultiDict[str] = CIMultiDict()
    received: dict[str, tuple[str, str]] = {}  # the client's forwarding headers: lower name → (name, value)
    for name, value in client.items():
        lower = name.lower()
        if lower in drop:
            if not (websocket and lower in WEBSOCKET_OWN):
                flow.change("request", "removed", name, value)
        elif lower.startswith("x-forwarded-") or lower == "forwarded":
            if lower in received:
                value = f"{received[lower][1]}, {value}"
            received[lower] = (name, value)
        elif lower == "cookie" and SESSION_COOKIE in value:
            kept = strip_session_cookie(value)
            if kept != value:
                flow.change("request", "rewritten" if kept else "removed", name, value, kept)
            if kept:
                out.add(name, kept)
        elif lower != "host":
            out.add(name, value)

    host = upstream_host(target)
    out["Host"] = host
    flow.change("request", "rewritten", "Host", peer.host or None, host)

    chain = received.get("x-forwarded-for", ("", ""))[1] if peer.trusted else ""
    forwarded = {
        "X-Forwarded-For": f"{chain}, {peer.address}" if chain else peer.address,
        "X-Forwarded-Host": peer.host,
        "X-Forwarded-Proto": peer.scheme,
        "X-Forwarded-Port": peer.port,
        "X-Forwarded-Prefix": prefix,
    }
    for name, new in forwarded.items():
        old = received.pop(name.lower(), (name, None))[1]
        if new:
            out[name] = new
            if old != new:
                flow.change("request", "rewritten" if old else "added", name, old, new)
        elif old is not None:
            flow.change("request", "removed", name, old)
    for name, old in received.values():  # X-Forwarded-Server, Forwarded, ...: not kept
        flow.change("request", "removed", name, old)
    return out


def client_response_headers(
    upstream: CIMultiDictProxy[str],
    target: URL,
    peer: Peer,
    match: Match,
    flow: ProxyFlow,
) -> CIMultiDict[str]:
    """The headers sent to the client: hop-by-hop removed, ``Location`` made public, the session named.

    An upstream's ``Set-Cookie`` for the edge's own cookie is removed.

    A prefix-routed answer also sets the edge's cookie (unless the client has it
    already), so that root-absolute requests from this page (``/@vite/client``,
    ``/src/...``) find the session; redirects land under the prefix unless the
    host names the session.
    """
    session_id = match.session_id
    location_prefix = "" if match.kind is MatchKind.HOST else f"/session/{session_id}"
    set_cookie = match.kind is MatchKind.PREFIX and cookie_session(flow.client_headers.get("Cookie")) != session_id
    listed = connection_listed(upstream)
    drop = (HOP_BY_HOP | listed) if listed else HOP_BY_HOP
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lower = name.lower()
        if lower in drop:
            flow.change("response", "removed", name, value)
            continue
        if lower == "set-cookie" and _cookie_name(value) == SESSION_COOKIE:
            # Only the edge sets its routing cookie: a preview must not move a browser to another session.
            flow.change("response", "removed", name, value)
            continue
        if lower == "location":
            public = public_location(value, target, location_prefix, f"{peer.scheme}://{peer.host}")
            if public != value:
                flow.change("response", "rewritten", name, value, public)
            out.add(name, public)
            continue
        out.add(name, value)
    out["X-Edge-Session"] = session_id
    flow.change("response", "added", "X-Edge-Session", None, session_id)
    if set_cookie:
        secure = "; Secure" if peer.scheme == "https" else ""
        out.add("Set-Cookie", f"{SESSION_COOKIE}={session_id}; Path=/; HttpOnly; SameSite=Lax{secure}")
        flow.change("response", "added", "Set-Cookie", None, f"{SESSION_COOKIE}=…")
    return out


def _cookie_name(set_cookie: str) -> str:
    """The name a ``Set-Cookie`` value sets (browsers trim whitespace around it)."""
    return set_cookie.partition(";")[0].partition("=")[0].strip()


def public_location(location: str, target: URL, public_prefix: str, public_origin: str) -> str:
    """Rewrite a redirect so the browser stays on the edge (and under the session prefix).

    ``http://127.0.0.1:4321/x`` → ``<public origin><prefix>/x``; root-absolute
    ``/x`` → ``<prefix>/x``; relative and foreign locations are left alone.
    """
    origins = [f"http://{upstream_host(target)}"]
    if target.port == 80:
        origins.append(f"http://{target.host_subcomponent}")
    for origin in origins:
        if location.startswith(origin) and location[len(origin) : len(origin) + 1] in ("", "/", "?", "#"):
            rest = location[len(origin) :]
            if not rest.startswith("/"):
                rest = "/" + rest
            return public_origin + public_prefix + rest
    if public_prefix and location.startswith("/") and not location.startswith("//"):
        if location == public_prefix or location.startswith(public_prefix + "/"):
            return location
        return public_prefix + location
    return location
