"""The operator page, ``/_edge/``: what the edge is doing, readable in a browser.

Sessions with their state (registry, preview supervisor, session table),
branch, preview link and last activity; one session's dev-server log; the
recent proxy log with every header the edge changed, filterable with
``?session=<id>`` — so "why is my preview blocked" is answered by looking.

Server-rendered HTML without scripts or external assets; every value is
escaped. While a preview installs or starts, the page reloads itself.
Access is checked by :mod:`edge.auth` (bearer token, or the cookie that
``POST /_edge/login`` sets); with no ``EDGE_API_TOKEN`` the page is open,
like the API.
"""

from __future__ import annotations

import html
import time
from string import Template
from typing import Iterable

from aiohttp import web

from control.sessions import REGISTRY
from core.ids import is_session_id
from edge import __version__, auth, keys
from edge.headers import make_peer
from edge.tracking import TRACKER
from preview.appkeys import PREVIEWS

REFRESH_SECONDS = 3
PROXY_ROWS = 100
LOG_LINES = 200
BUSY_STATES = frozenset({"installing", "starting", "crashed"})
MAX_LOGIN_BODY = 4096

# No scripts, no frames, nothing from elsewhere; a preview that opened this page cannot read it (COOP).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

PAGE = Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
$refresh<title>$title</title>
<link rel="icon" href="data:,">
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1d1d1f;background:#fff}
h1{font-size:1.35em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .4em}
nav,.meta{color:#555;margin-bottom:.8em}a{color:#0b57d0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e3e3e3;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f6f6f6;font-weight:600}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
pre{background:#f6f6f6;padding:.8em;overflow:auto;max-height:40em;white-space:pre-wrap}
.state{display:inline-block;padding:0 .45em;border-radius:.6em;background:#eee}
.ready{background:#d7f5dd}.starting,.installing,.crashed{background:#fff1c2}.failed,.error{background:#ffd9d6}
.changes{margin:0;padding-left:1.1em}.bad{color:#b3261e}
form{margin:1em 0}input{font:inherit;padding:.3em}
</style></head>
<body>
<h1>$title</h1>
<nav><a href="/_edge/">Overview</a></nav>
$body
</body></html>
"""
)


def esc(value: object) -> str:
    """Every value on the page passes through here."""
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, refresh: bool = False, status: int = 200) -> web.Response:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">\n' if refresh else ""
    text = PAGE.substitute(refresh=meta, title=esc(title), body=body)
    return web.Response(status=status, text=text, content_type="text/html", headers=SECURITY_HEADERS)


def _ago(epoch: float | None) -> str:
    if not epoch:
        return "never"
    seconds = max(0, int(time.time() - epoch))
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _state(value: str | None) -> str:
    text = value or "—"
    return f'<span class="state {esc(text)}">{esc(text)}</span>'


def _table(headers: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f"<p>{esc(empty)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _session_rows(app: web.Application) -> tuple[list[str], bool]:
    """One row per known session (registry, previews, routes); True when a preview is on its way."""
    registry = app[REGISTRY]
    tracker = app.get(TRACKER)
    supervisor = app.get(PREVIEWS)
    table = app[keys.SESSIONS]
    entries = {s.session_id: s for s in registry.all()}
    ids = sorted(set(entries) | set(table.routes) | set(supervisor.previews if supervisor else ()))
    busy = False
    rows = []
    for sid in ids:
        entry = entries.get(sid)
        view = tracker.view(entry) if tracker is not None and entry is not None else None
        preview = supervisor.status(sid) if supervisor is not None else {"state": "—"}
        busy = busy or preview.get("state") in BUSY_STATES
        route = table.get(sid)
        route_text = f"{route.state.value} → {route.target}" if route and route.target else (route.state.value if route else "—")
        owner = f"{entry.client_id}/{entry.user_id}/{entry.thread_id}" if entry else "(not registered)"
        activity = (view.last_activity_epoch if view else 0.0) or (entry.last_activity if entry else 0.0)
        rows.append(
            "<tr>"
            f'<td><a href="/_edge/sessions/{esc(sid)}"><code>{esc(sid)}</code></a></td>'
            f"<td>{esc(owner)}</td>"
            f"<td><code>{esc(entry.branch if entry else '')}</code></td>"
            f"<td>{_state((view.status if view else None) or (entry.status if entry else None))}</td>"
            f"<td>{_state(preview.get('state'))}"
            + (f' <span class="bad">{esc(preview.get("error"))}</span>' if preview.get("error") else "")
            + f"</td><td><code>{esc(route_text)}</code></td>"
            f'<td><a href="/session/{esc(sid)}/">/session/{esc(sid)}/</a></td>'
            f"<td>{esc(_ago(activity))}</td>"
            "</tr>"
        )
    return rows, busy


def _change_list(changes: list[dict]) -> str:
    items = []
    for change in changes:
        detail = change["name"]
        if change.get("old") is not None and change.get("new") is not None:
            detail += f": {change['old']} → {change['new']}"
        elif change.get("new") is not None:
            detail += f": {change['new']}"
        elif change.get("old") is not None:
            detail += f" (was {change['old']})"
        items.append(f"<li>{esc(change['direction'])} {esc(change['action'])} <code>{esc(detail)}</code></li>")
    return f'<ul class="changes">{"".join(items)}</ul>' if items else ""


def _proxy_rows(records: list[dict]) -> list[str]:
    rows = []
    for record in reversed(records):  # newest first
        status = record.get("status")
        error = record.get("error")
        rows.append(
            "<tr>"
            f"<td>{esc(time.strftime('%H:%M:%S', time.localtime(record['time'])))}</td>"
            f'<td><a href="/_edge/?session={esc(record["session"])}"><code>{esc(record["session"])}</code></a></td>'
            f"<td>{esc(record['match'])}</td>"
            f"<td><code>{esc(record['method'])} {esc(record['path'])}</code>{' (WebSocket)' if record.get('websocket') else ''}</td>"
            f'<td class="{"bad" if (status or 0) >= 400 or error else ""}">{esc(status)}'
            + (f"<br>{esc(error)}" if error else "")
            + f"</td><td><code>{esc(record.get('clientHost'))} → {esc(record.get('upstreamHost'))}</code></td>"
            f"<td>{esc(record.get('durationMs'))} ms</td>"
            f"<td>{_change_list(record.get('changes') or [])}</td>"
            "</tr>"
        )
    return rows


PROXY_HEADERS = ("time", "session", "match", "request", "status", "Host: client → upstream", "duration", "header changes")


def _session_filter(request: web.Request) -> str | None:
    raw = request.query.get("session", "")
    if not raw:
        return None
    if not is_session_id(raw):
        raise web.HTTPBadRequest(text="session must be a session id", headers=SECURITY_HEADERS)
    return raw


async def overview(request: web.Request) -> web.Response:
    """``GET /_edge/``: sessions, previews and the recent proxy log (``?session=`` filters it)."""
    app = request.app
    settings = app[keys.SETTINGS]
    only = _session_filter(request)
    rows, busy = _session_rows(app)
    recent = app[keys.PROXY_LOG].recent
    records = recent.for_session(only, PROXY_ROWS) if only else recent.last(PROXY_ROWS)
    uptime = int(time.monotonic() - app[keys.STARTED_AT])
    body = (
        f'<p class="meta">edge {esc(__version__)} · up {uptime // 60} min {uptime % 60} s · '
        f"workspace <code>{esc(settings.workspace_path)}</code>"
        + (" · refreshing while a preview starts" if busy else "")
        + "</p><h2>Sessions</h2>"
        + _table(
            ("session", "client/user/thread", "branch", "status", "preview", "route", "preview link", "last activity"),
            rows,
            "No sessions yet: POST /api/init creates one.",
        )
        + "<h2>Recent proxy log"
        + (f" of <code>{esc(only)}</code>" if only else "")
        + "</h2>"
        + '<form method="get" action="/_edge/"><label>Session <input name="session" value="'
        + esc(only or "")
        + '" size="32"></label> <button>Filter</button></form>'
        + _table(PROXY_HEADERS, _proxy_rows(records), "No proxied requests yet.")
    )
    return page("webordinary edge", body, refresh=busy)


async def session_page(request: web.Request) -> web.Response:
    """``GET /_edge/sessions/<id>``: one session's preview status, its log tail and its proxy records."""
    app = request.app
    sid = request.match_info["session_id"]
    if not is_session_id(sid):
        return page("Not a session id", "<p>That is not a session id.</p>", status=400)
    supervisor = app.get(PREVIEWS)
    entry = app[REGISTRY].get(sid)
    known = entry is not None or app[keys.SESSIONS].get(sid) is not None or (supervisor and supervisor.get(sid))
    if not known:
        return page("Unknown session", f"<p>No session <code>{esc(sid)}</code>.</p>", status=404)
    status = supervisor.status(sid) if supervisor is not None else {"state": "—"}
    lines = supervisor.log_lines(sid, LOG_LINES) if supervisor is not None else []
    fields = [
        ("thread", f"{entry.client_id}/{entry.user_id}/{entry.thread_id}" if entry else "(not registered)"),
        ("branch", entry.branch if entry else ""),
        ("worktree", entry.worktree if entry else ""),
        ("preview", status.get("state")),
        ("error", status.get("error")),
        ("port", status.get("port")),
        ("Astro / Node", f"{status.get('astroVersion') or '?'} / {status.get('nodeVersion') or '?'}"),
        ("dependencies", status.get("dependencies")),
        ("restarts", status.get("restarts")),
        ("idle seconds", status.get("idleSeconds")),
    ]
    details = "".join(f"<tr><th>{esc(name)}</th><td><code>{esc(value)}</code></td></tr>" for name, value in fields if value not in (None, ""))
    body = (
        f'<p class="meta">Preview: <a href="/session/{esc(sid)}/">/session/{esc(sid)}/</a> {_state(status.get("state"))}</p>'
        f"<table>{details}</table>"
        "<h2>Dev server log</h2>"
        + (f"<pre>{esc(chr(10).join(lines))}</pre>" if lines else "<p>No log lines yet.</p>")
        + "<h2>Recent proxy log</h2>"
        + _table(PROXY_HEADERS, _proxy_rows(app[keys.PROXY_LOG].recent.for_session(sid, PROXY_ROWS)), "No proxied requests yet.")
    )
    return page(f"Session {sid}", body, refresh=status.get("state") in BUSY_STATES)


LOGIN_FORM = (
    '<form method="post" action="/_edge/login">'
    '<label>API token <input type="password" name="token" autocomplete="current-password" autofocus required></label> '
    "<button>Sign in</button></form>"
    "<p>The token is EDGE_API_TOKEN. Signing in sets a cookie that only this page accepts (12 hours), never the API.</p>"
)


async def login_form(request: web.Request) -> web.Response:
    """``GET /_edge/login``: the form that trades the API token for the operator cookie."""
    if request.app[keys.SETTINGS].api_token is None:
        raise web.HTTPSeeOther("/_edge/", headers=SECURITY_HEADERS)
    note = ""
    if auth.OPERATOR_COOKIE in request.cookies and "Sec-Fetch-Mode" not in request.headers:
        note = (
            '<p class="bad">You are signed in, but your browser sent no Fetch Metadata, which it does only to '
            "https or loopback addresses: open this page over https, or through an SSH tunnel to localhost.</p>"
        )
    return page("Sign in to the edge", note + LOGIN_FORM)


async def login(request: web.Request) -> web.Response:
    """``POST /_edge/login`` (form field ``token``): set the operator cookie, then show the page."""
    token = request.app[keys.SETTINGS].api_token
    if token is None:
        raise web.HTTPSeeOther("/_edge/", headers=SECURITY_HEADERS)
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        return page("Sign in to the edge", '<p class="bad">Request too large.</p>' + LOGIN_FORM, status=413)
    form = await request.post()
    sent = form.get("token")
    if not isinstance(sent, str) or not auth.token_matches(sent, token):
        return page("Sign in to the edge", '<p class="bad">That token is not valid.</p>' + LOGIN_FORM, status=401)
    response = web.Response(status=303, headers={**SECURITY_HEADERS, "Location": "/_edge/"})
    response.set_cookie(
        auth.OPERATOR_COOKIE,
        auth.operator_cookie(token),
        path="/_edge",
        max_age=auth.OPERATOR_COOKIE_SECONDS,
        httponly=True,
        samesite="Strict",
        secure=_public_scheme(request) == "https",
    )
    return response


def _public_scheme(request: web.Request) -> str:
    """The browser's scheme (``X-Forwarded-Proto`` only from EDGE_TRUSTED_PROXIES)."""
    settings = request.app[keys.SETTINGS]
    return make_peer(request.remote, request.headers, request.scheme, settings.trusted_proxies).scheme


async def to_overview(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/_edge/")


def setup(app: web.Application) -> None:
    """Add the operator routes (before the proxy catch-all)."""
    app.router.add_get("/_edge", to_overview)
    app.router.add_get("/_edge/", overview)
    app.router.add_get("/_edge/sessions/{session_id}", session_page)
    app.router.add_get(auth.OPERATOR_LOGIN, login_form)
    app.router.add_post(auth.OPERATOR_LOGIN, login)
