"""``EDGE_PREVIEW_HOST_REDIRECT=1``: send a browser's prefix navigation to the session's own host.

Where wildcard DNS exists, host mode (``<session>--edit.example.com``) keeps
each preview on an origin of its own, which needs no rewriting and no cookie.
With this setting a page opened at ``/session/<id>/<path>?<query>`` gets a 307
to ``//<session host>[:port]/<path>?<query>`` (scheme-relative: the browser
keeps its scheme). Only navigations are redirected (a page load, not a
module, ``fetch`` or curl request), only for a session id that is a valid host
label, and only when ``EDGE_SESSION_HOSTS`` names a pattern.
"""

from __future__ import annotations

import re

from multidict import CIMultiDict, CIMultiDictProxy

from edge.routing import Match, MatchKind

Headers = CIMultiDictProxy[str] | CIMultiDict[str]
# Host mode lower-cases the name, so only ids that survive that unchanged keep their session.
_LABEL = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_PORT = re.compile(r":\d{1,5}$")


def is_navigation(headers: Headers) -> bool:
    """A browser loading a page: Fetch Metadata, or over plain http (none sent) ``Upgrade-Insecure-Requests`` with HTML."""
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate" and headers.get("Sec-Fetch-Dest", "document") in ("document", "iframe")
    return headers.get("Upgrade-Insecure-Requests") == "1" and "text/html" in headers.get("Accept", "")


def session_host(patterns: tuple[str, ...], session_id: str, request_host: str) -> str | None:
    """The host-mode name of ``session_id``: the pattern built on the request's own host, else the first one."""
    if not patterns or _LABEL.fullmatch(session_id) is None:
        return None
    name = request_host.lower()
    for pattern in patterns:
        if pattern.split("{session}", 1)[1].lower().lstrip(".-") == name:
            return pattern.replace("{session}", session_id)
    return patterns[0].replace("{session}", session_id)


def location(found: object, method: str, headers: Headers, enabled: bool, patterns: tuple[str, ...]) -> str | None:
    """Where to send this request (None: proxy it as usual)."""
    if not enabled or not isinstance(found, Match) or found.kind is not MatchKind.PREFIX:
        return None
    if method not in ("GET", "HEAD") or not is_navigation(headers):
        return None
    host_header = headers.get("Host", "")
    port = _PORT.search(host_header)
    port_text = port.group(0) if port and not host_header.endswith("]") else ""
    name = host_header[: len(host_header) - len(port_text)] if port_text else host_header
    host = session_host(patterns, found.session_id, name)
    return None if host is None else f"//{host}{port_text}{found.upstream_path}"
