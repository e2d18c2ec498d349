"""Who may drive the edge: the bearer token on the API, and same-site WebSockets only.

Preview pages run the client's own JavaScript on the edge's origin, so
nothing a browser sends by itself (cookies, a token in the URL it was
given) may unlock the API: with ``EDGE_API_TOKEN`` set, every ``/api/*``
path but ``/api/health``, and ``/metrics``, needs ``Authorization: Bearer
<token>``, whichever module added the route. The check goes by path, in one
middleware after the host policy, so session hosts (``<id>--edit...``),
whose every path belongs to the preview, never reach the API at all. No
answer carries CORS permissions, so a cross-origin page cannot read one.

The operator page (``/_edge``, :mod:`edge.operator`) is protected the same
way. A browser cannot send a bearer header, so ``POST /_edge/login`` trades
the token, once, for a cookie (``HttpOnly; SameSite=Strict; Path=/_edge``, an
expiring HMAC of the token, never the token). Preview pages share the
edge's origin, so the cookie counts only on a top-level same-origin
navigation to ``/_edge`` (Fetch Metadata: ``Sec-Fetch-Mode: navigate``,
``Sec-Fetch-Dest: document``): a preview's ``fetch`` or iframe is refused,
and the page's ``Cross-Origin-Opener-Policy`` keeps a preview that opened it
from reading it. The cookie never unlocks ``/api``.

Callers inside ``EDGE_API_TRUSTED_NETWORKS`` (Hermes in the VPC, which sends
no header) need no token for the API and metrics; their address is the
connection's, or, behind proxies in ``EDGE_TRUSTED_PROXIES`` (the ALB), the
nearest ``X-Forwarded-For`` address that is not one of those proxies. A
browser coming through the ALB from outside is not inside them.

A cross-site page could still open a WebSocket to a session (browsers do not
apply CORS to WebSockets), so upgrades whose ``Origin`` names a host outside
``EDGE_PUBLIC_HOSTS`` are refused before anything reaches the upstream.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from typing import Awaitable, Callable

from aiohttp import web
from yarl import URL

from edge import keys, reserved
from edge.errors import error_response, wants_html
from edge.headers import client_address, is_trusted
from edge.hostpolicy import split_host
from edge.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_NAMES = frozenset({"localhost"})
OPERATOR_LOGIN = "/_edge/login"
OPERATOR_COOKIE = "edge_operator"
OPERATOR_COOKIE_SECONDS = 12 * 3600


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def is_operator_path(path: str) -> bool:
    return path == "/_edge" or path.startswith("/_edge/")


def is_protected(path: str) -> bool:
    """True for the edge's API, metrics and operator paths (``/api/health`` stays open for load balancers)."""
    return reserved.protected(path)


def _operator_mac(token: str, expires: int) -> str:
    return hmac.new(token.encode("utf-8"), f"edge-operator:{expires}".encode(), hashlib.sha256).hexdigest()


def operator_cookie(token: str) -> str:
    """The operator cookie's value: when it expires and an HMAC of that with the token."""
    expires = int(time.time() + OPERATOR_COOKIE_SECONDS)
    return f"{expires}.{_operator_mac(token, expires)}"


def operator_cookie_ok(request: web.BaseRequest, token: str) -> bool:
    """A valid operator cookie on a top-level same-origin navigation to ``/_edge`` (never a fetch or frame)."""
    headers = request.headers
    if request.method != "GET" or not is_operator_path(request.path):
        return False
    if (headers.get("Sec-Fetch-Mode"), headers.get("Sec-Fetch-Dest")) != ("navigate", "document"):
        return False
    if headers.get("Sec-Fetch-Site") not in ("same-origin", "none"):
        return False
    expires, _, mac = request.cookies.get(OPERATOR_COOKIE, "").partition(".")
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(mac.encode("ascii", "replace"), _operator_mac(token, int(expires)).encode())


def bearer_ok(request: web.BaseRequest, token: str) -> bool:
    """True when the request carries exactly one ``Authorization: Bearer <token>`` with this token."""
    values = request.headers.getall("Authorization", [])
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return token_matches(credentials, token)


def token_matches(sent: str, token: str) -> bool:
    """Constant-time comparison of a token a client sent (a header or form value) with ours."""
    # Header values are decoded with surrogateescape: encode back to the bytes that were sent.
    return hmac.compare_digest(sent.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def unauthorized(error: str) -> web.Response:
    return web.json_response(
        {"success": False, "error": error},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="edge"', "Cache-Control": "no-store"},
    )


def caller_address(request: web.BaseRequest, settings: Settings) -> str:
    """The caller's address: the connection's, or behind trusted proxies the nearest forwarded one."""
    return client_address(request.remote or "", request.headers.getall("X-Forwarded-For", []), settings.trusted_proxies)


def trusted_caller(request: web.BaseRequest, settings: Settings) -> bool:
    """Whether the caller is inside ``EDGE_API_TRUSTED_NETWORKS`` (no token needed for the API)."""
    networks = settings.api_trusted_networks
    return bool(networks) and is_trusted(caller_address(request, settings), networks)


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse API and metrics requests without the bearer token (no token configured: open)."""
    settings = request.app[keys.SETTINGS]
    token = settings.api_token
    if token is not None and is_protected(request.path) and not bearer_ok(request, token):
        if not is_operator_path(request.path) and trusted_caller(request, settings):
            return await handler(request)
        if operator_cookie_ok(request, token):
            return await handler(request)
        if is_operator_path(request.path) and request.method == "GET" and wants_html(request):
            return web.Response(status=303, headers={"Location": OPERATOR_LOGIN, "Cache-Control": "no-store"})
        if "Authorization" in request.headers:
            return unauthorized("The API token is not valid.")
        return unauthorized("This API needs an 'Authorization: Bearer <EDGE_API_TOKEN>' header.")
    return await handler(request)


def cross_site_upgrade(request: web.Request) -> web.Response | None:
    """A 403 for a WebSocket upgrade whose ``Origin`` is not one of the edge's hosts, else None.

    Browsers always send ``Origin`` on a WebSocket handshake; a client without
    one is not a browser page and gains nothing from ambient credentials.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    host = None
    if origin != "null":
        try:
            authority = URL(origin).raw_authority
        except ValueError:
            authority = ""
        host = split_host(authority) if authority else None
    if host is not None and request.app[keys.HOSTS].allows(host):
        return None
    return error_response(request, 403, "Cross-site WebSocket connections are not accepted.", f"Origin {origin!r} is not one of this edge's hosts.")


def is_loopback(host: str) -> bool:
    """True when listening on ``host`` is reachable from this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Settings) -> str | None:
    """Why the edge must not start as configured (an open API beyond loopback), or None."""
    if settings.api_token or settings.allow_no_auth or is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host!r} without an API token: anyone who can reach it could "
        "drive the control API. Set EDGE_API_TOKEN (clients send 'Authorization: Bearer <token>'), "
        "listen on 127.0.0.1 (EDGE_HOST), or set EDGE_ALLOW_NO_AUTH=1 if something in front of the edge "
        "already authenticates every request."
    )
