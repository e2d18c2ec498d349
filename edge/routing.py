"""The session table and how a request finds its session.

A request reaches a session in one of four ways, tried in this order:

1. host mode: the ``Host`` names the session (``abc--edit.amelia...``); the
   path goes upstream unchanged;
2. prefix mode: ``/session/<id>/rest`` goes upstream as ``/rest``;
3. referrer: a root-absolute request (``/src/...``, ``fetch("/data.json")``)
   made by a page or module under ``/session/<id>/`` of the same host names
   that page in its ``Referer``: the tab's own session, whatever other tabs do;
4. cookie: a root-absolute request without such a referrer (``curl``, the HMR
   socket at ``/?token=...`` from a client the edge did not rewrite) carries
   the session in the edge's cookie, which is per browser.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Awaitable, Callable, Iterable, NamedTuple

from yarl import URL

from core.ids import SESSION_ID

SESSION_COOKIE = "edge_session"
_PREFIX_RE = re.compile(rf"^/session/(?P<session>{SESSION_ID})(?P<rest>/.*)?$", re.DOTALL)


class RouteError(ValueError):
    """A route target the edge refuses (bad URL, or outside EDGE_UPSTREAM_NETWORKS)."""


def parse_target(
    target: object,
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> URL:
    """Validate an upstream target such as ``http://127.0.0.1:4400``.

    Only plain ``http`` origins whose host is an IP literal inside one of the
    allowed networks are accepted: a name could resolve anywhere, so the
    routes API could otherwise be used to reach arbitrary hosts. Messages never
    repeat the target, which might carry credentials.
    """
    if not isinstance(target, str) or not target:
        raise RouteError("target must be a URL string such as http://127.0.0.1:4400")
    try:
        url = URL(target)
        port = url.explicit_port
    except ValueError:
        raise RouteError("target is not a valid URL") from None
    if url.scheme != "http" or not url.host or "@" in (url.raw_authority or ""):
        raise RouteError("target must be an http:// origin without credentials")
    if url.path not in ("", "/") or "?" in target or "#" in target:
        raise RouteError("target must be an origin (no path, query or fragment)")
    try:
        address = ipaddress.ip_address(url.host)
    except ValueError:
        raise RouteError("target host must be an IP address (names are not resolved)") from None
    if not any(address in net for net in networks):
        raise RouteError(f"target {address} is outside EDGE_UPSTREAM_NETWORKS")
    if not port:
        raise RouteError("target must name a port")
    return URL.build(scheme="http", host=url.host, port=port)


class RouteState(str, Enum):
    """Whether a session's upstream can take requests now."""

    READY = "ready"
    STARTING = "starting"
    FAILED = "failed"


@dataclass
class Route:
    """Where one session's requests go."""

    session_id: str
    target: URL | None
    state: RouteState = RouteState.READY
    source: str = "api"
    detail: str = ""
    retry_after: int = 2
    root: Path | None = None  # the dev server's project folder (its /@fs/ reads stay inside: edge.viteguard)

    def as_json(self) -> dict:
        return {
            "sessionId": self.session_id,
            "target": str(self.target) if self.target else None,
            "state": self.state.value,
            "source": self.source,
            "detail": self.detail,
        }


RemoveListener = Callable[[str], Awaitable[None]]
# Asked for a session with no route (or a route that is not ready): a preview
# supervisor can start the session's dev server and return its current route.
RouteProvider = Callable[[str], Awaitable["Route | None"]]


@dataclass
class SessionTable:
    """sessionId → Route. Filled by the routes API and by the preview supervisor."""

    routes: dict[str, Route] = field(default_factory=dict)
    provider: RouteProvider | None = None
    last_activity: dict[str, float] = field(default_factory=dict)
    _listeners: list[RemoveListener] = field(default_factory=list)
    _watchers: list[Callable[[], None]] = field(default_factory=list)

    def touch(self, session_id: str) -> None:
        """Record activity (a proxied response or WebSocket frame) for idle tracking."""
        self.last_activity[session_id] = time.monotonic()

    def set(self, route: Route) -> None:
        self.routes[route.session_id] = route
        self._changed()

    def get(self, session_id: str) -> Route | None:
        return self.routes.get(session_id)

    async def lookup(self, session_id: str) -> Route | None:
        """The route for a request: asks the provider when none is ready."""
        route = self.routes.get(session_id)
        if (route is None or route.state is not RouteState.READY) and self.provider is not None:
            provided = await self.provider(session_id)
            if provided is not None:
                return provided
        return route

    async def remove(self, session_id: str) -> bool:
        """Drop a route and tell listeners (the WebSocket relay closes its sockets)."""
        route = self.routes.pop(session_id, None)
        self._changed()
        for listener in list(self._listeners):
            await listener(session_id)
        return route is not None

    def on_remove(self, listener: RemoveListener) -> None:
        self._listeners.append(listener)

    def on_change(self, watcher: Callable[[], None]) -> None:
        """Call ``watcher`` after every set or removal (edge workers get the new table)."""
        self._watchers.append(watcher)

    def _changed(self) -> None:
        for watcher in self._watchers:
            watcher()

    def __len__(self) -> int:
        return len(self.routes)


class MatchKind(str, Enum):
    HOST = "host"
    PREFIX = "prefix"
    REFERRER = "referrer"
    COOKIE = "cookie"


class Match(NamedTuple):
    """A request's session and the raw path+query to send upstream (made per request: a named tuple is cheapest)."""

    session_id: str
    kind: MatchKind
    upstream_path: str  # raw (still percent-encoded) path and query, starting with '/'
    prefix: str  # the public prefix that was stripped ('' in host and cookie mode)


@dataclass(frozen=True)
class Redirect:
    """Send the browser elsewhere (307) instead of proxying."""

    location: str


def match_prefix(raw_path: str) -> Match | Redirect | None:
    """Match ``/session/<id>/...`` on the raw path (whole segments only)."""
    path, sep, query = raw_path.partition("?")
    found = _PREFIX_RE.match(path)
    if not found or ".." in found.group("session"):
        return None
    session_id = found.group("session")
    rest = found.group("rest")
    prefix = f"/session/{session_id}"
    if rest is None:
        return Redirect(prefix + "/" + sep + query)
    return Match(session_id, MatchKind.PREFIX, rest + sep + query, prefix)


def referrer_session(referer: str | None, host: str) -> str | None:
    """The session of the page that made a request: a ``Referer`` on the same host under ``/session/<id>/``.

    Browsers send the full referrer for same-origin requests unless a page
    asks otherwise (``Referrer-Policy``); then the cookie decides.
    """
    if not referer:
        return None
    scheme, sep, rest = referer.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    authority, slash, path = rest.partition("/")
    if authority != host or not slash:
        return None
    found = _PREFIX_RE.match("/" + path.partition("?")[0].partition("#")[0])
    if not found or found.group("rest") is None or ".." in found.group("session") or found.group("session") == "_edge":
        return None  # /session/_edge/…: the edge's own pages
    return found.group("session")


def cookie_session(cookie_header: str | None) -> str | None:
    """The session named by the edge's own cookie, if any."""
    for name, value in iter_cookies(cookie_header):
        if name == SESSION_COOKIE:
            return value
    return None


def iter_cookies(cookie_header: str | None) -> Iterable[tuple[str, str]]:
    for piece in (cookie_header or "").split(";"):
        name, _, value = piece.strip().partition("=")
        yield name.strip(), value.strip()


def strip_session_cookie(cookie_header: str) -> str | None:
    """Remove the edge's cookie; every other cookie passes byte-identical (None if none is left)."""
    pieces = cookie_header.split(";")
    kept = [piece for piece in pieces if piece.strip().partition("=")[0].strip() != SESSION_COOKIE]
    if len(kept) == len(pieces):
        return cookie_header
    return ";".join(kept).strip() or None


def is_navigation(sec_fetch_mode: str | None, accept: str | None) -> bool:
    """Whether a request loads a page (top level or in a frame), so a redirect is safe.

    Browsers say so with ``Sec-Fetch-Mode: navigate``; clients that send no
    Sec-Fetch headers are judged by an HTML ``Accept``.
    """
    if sec_fetch_mode is not None:
        return sec_fetch_mode == "navigate"
    return "text/html" in (accept or "")
