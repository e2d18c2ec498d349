"""An upstream and a client that put a secret in every place the proxy log must redact.

Used by the proxy log and flow file tests: each secret is a distinct string,
so a test can assert that none of them reaches stdout, memory or disk.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from tests.support.routes import add_route
from tests.support.websocket import ws_echo

PUBLIC_HOST = "edit.amelia.webordinary.com"
SECRETS = {
    "authorization": "sekrit-authorization-1",
    "proxy_authorization": "sekrit-proxy-authorization-2",
    "cookie": "sekrit-cookie-3",
    "set_cookie": "sekrit-set-cookie-4",
    "query_token": "sekrit-query-token-5",
    "location_token": "sekrit-location-token-6",
    "websocket_token": "sekrit-websocket-token-7",
    "referer_token": "sekrit-referer-token-8",
    "api_key": "sekrit-api-key-9",
}
UPLOAD = b"x" * 1000


def upstream_app() -> web.Application:
    """``/page`` sets a cookie; ``/hop`` lists ``Set-Cookie`` in ``Connection``; ``/redirect``
    sends a ``Location`` with a token; ``/upload`` reads a body; ``/hmr`` is a WebSocket echo."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="hello page", headers={"Set-Cookie": f"up={SECRETS['set_cookie']}; Path=/; HttpOnly"})

    async def hop(request: web.Request) -> web.Response:
        return web.Response(text="hop", headers={"Set-Cookie": f"hop={SECRETS['set_cookie']}", "Connection": "Set-Cookie"})

    async def redirect(request: web.Request) -> web.Response:
        host = request.headers["Host"]
        return web.Response(status=302, headers={"Location": f"http://{host}/next?token={SECRETS['location_token']}&v=2"})

    async def upload(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/hop", hop)
    app.router.add_get("/redirect", redirect)
    app.router.add_post("/upload", upload)
    app.router.add_get("/hmr", ws_echo(("vite-hmr",), prefix="echo "))
    return app


async def logged_edge(edge, serve, sessions: tuple[str, ...] = ("s1",), **overrides):
    """A real edge (``edge(**overrides)``, e.g. ``proxy_log=`` or ``flow_log=``) whose ``sessions``
    all lead to one :func:`upstream_app`; returns ``(edge server, upstream server)``."""
    upstream = await serve(upstream_app())
    server = await edge(**overrides)
    for session in sessions:
        add_route(server, session, upstream.origin)
    return server, upstream


async def secret_traffic(client: aiohttp.ClientSession, edge_url) -> None:
    """One request per redaction case, all on session ``s1``; a WebSocket session last."""
    headers = {
        "Host": PUBLIC_HOST,
        "Authorization": f"Bearer {SECRETS['authorization']}",
        "Proxy-Authorization": f"Basic {SECRETS['proxy_authorization']}",
        "Cookie": f"edge_session=s1; sid={SECRETS['cookie']}",
        "Referer": f"http://{PUBLIC_HOST}/session/s1/?token={SECRETS['referer_token']}",
        "X-Api-Key": SECRETS["api_key"],
    }
    async with client.get(edge_url(f"/session/s1/page?token={SECRETS['query_token']}&v=1"), headers=headers) as resp:
        assert resp.status == 200
        assert await resp.text() == "hello page"
        assert resp.headers["X-Edge-Session"] == "s1"
    # The client names Authorization in Connection, so the edge removes it (a change record).
    hop_headers = {**headers, "Connection": "keep-alive, Authorization"}
    async with client.get(edge_url("/session/s1/hop"), headers=hop_headers) as resp:
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers
    async with client.get(edge_url("/session/s1/redirect"), headers=headers, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"].startswith(f"http://{PUBLIC_HOST}/session/s1/next?token=")
    async with client.post(edge_url("/session/s1/upload"), data=UPLOAD, headers=headers) as resp:
        assert await resp.text() == str(len(UPLOAD))
    ws_url = edge_url(f"/session/s1/hmr?token={SECRETS['websocket_token']}")
    async with client.ws_connect(ws_url, protocols=("vite-hmr",), headers={"Host": PUBLIC_HOST}) as ws:
        assert ws.protocol == "vite-hmr"
        await ws.send_str("ping")
        assert (await ws.receive_str()) == "echo ping"
        await ws.close()

