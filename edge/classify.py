"""The one decision about a request: refused, the edge's own, or which session, and how.

aiohttp's path (the ``host_policy`` middleware and the catch-all proxy
handler), the fast path and the WebSocket relay all call :func:`classify`,
so they cannot decide differently. In order:

1. a target that is not origin-form (``http://...``, ``*``): 400;
2. the health checks (``GET``/``HEAD``, :mod:`edge.reserved`), for any ``Host``;
3. exactly one valid ``Host``, else 400;
4. a host naming a session (host mode): proxied with the path unchanged;
5. a host outside ``EDGE_PUBLIC_HOSTS``: 421, never proxied;
6. ``/session/<id>/...`` (prefix mode), or ``/session/<id>``: 307 to the slash;
7. the edge's own paths (:mod:`edge.reserved`): never the cookie's;
8. the page that asked (a same-host ``Referer`` under ``/session/<id>/``):
   proxied to that page's session, except navigations and stylesheet or script
   loads, which get 307 under the prefix (so what they load in turn names the
   session too);
9. the edge's cookie: proxied, except navigations, which get 307 under the prefix;
10. anything else belongs to no session (404).
"""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from core.ids import is_session_id
from edge import reserved
from edge.hostpolicy import HostPolicy, split_host
from edge.routing import Match, MatchKind, Redirect, cookie_session, is_navigation, match_prefix, referrer_session

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


class Refusal(NamedTuple):
    """Answer with this error, never route."""

    status: int
    error: str
    hint: str = ""


class Own(NamedTuple):
    """One of the edge's own paths (its router answers, or 404 ``No such edge route``)."""

    path: str


class NoSession(NamedTuple):
    """A path of the previews' namespace that names no session (404)."""

    path: str


Decision = Match | Redirect | Refusal | Own | NoSession

# The decision for a request on aiohttp's path, made once by the host_policy middleware.
DECISION = web.RequestKey("decision", object)

ABSOLUTE_FORM = Refusal(400, "Absolute-form and authority-form request targets are not accepted.")
BAD_HOST = Refusal(400, "The request needs exactly one valid Host header.")
_PROBES = ("GET", "HEAD")
# Loads whose own requests name their URL as referrer: moved under the prefix so those requests name the session.
_FOLLOWED = frozenset({"style", "script", "worker", "sharedworker", "iframe", "frame"})


def classify(raw_path: str, method: str, headers: Headers, hosts: HostPolicy, *, upgrade: bool) -> Decision:
    """Decide a request from its raw target, method and headers (see the module's list)."""
    if not raw_path.startswith("/"):
        return ABSOLUTE_FORM
    path = raw_path.partition("?")[0]
    row = reserved.lookup(path)
    if row is not None and row.any_host and method in _PROBES:
        return Own(path)
    values = headers.getall("Host", ())
    host = split_host(values[0]) if len(values) == 1 else None
    if host is None:
        return BAD_HOST
    session_id = hosts.session_for_host(host)
    if session_id is not None:
        return Match(session_id, MatchKind.HOST, raw_path, "")
    if not hosts.allows(host):
        return Refusal(421, f"This edge does not serve the host {host!r}.", "Add it to EDGE_PUBLIC_HOSTS if it is one of yours.")
    found = match_prefix(raw_path)
    if found is not None:
        return found
    if row is not None:
        return Own(path) if row.own or path == row.path else NoSession(path)
    session = referrer_session(headers.get("Referer"), values[0])
    if session is not None:
        if not upgrade and (is_navigation(headers.get("Sec-Fetch-Mode"), headers.get("Accept")) or headers.get("Sec-Fetch-Dest") in _FOLLOWED):
            return Redirect(f"/session/{session}{raw_path}")
        return Match(session, MatchKind.REFERRER, raw_path, "")
    session = cookie_session(headers.get("Cookie"))
    if session is None or not is_session_id(session):
        return NoSession(path)
    if not upgrade and is_navigation(headers.get("Sec-Fetch-Mode"), headers.get("Accept")):
        return Redirect(f"/session/{session}{raw_path}")
    return Match(session, MatchKind.COOKIE, raw_path, "")
