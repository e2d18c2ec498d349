"""Per-tab sessions in prefix mode: a service worker keeps each browser tab on its own preview.

Astro's ``base`` never reaches Vite, so a preview page at ``/session/<id>/``
asks for ``/@vite/client``, ``/src/…``, ``/_astro/…`` and opens its HMR socket
at ``/?token=…``: root paths that name no session. The ``edge_session``
cookie routes them, but a cookie is per browser, so two previews open in two
tabs answer each other's requests. This module fixes that in the browser:

- One service worker (``/session/_edge/tab-worker.js``, scope ``/``) sees
  every request of every page of the edge's origin. A request whose page lives
  under ``/session/<id>/`` (the client's URL, remembered per client) is sent to
  ``/session/<id>/<path>`` instead: documents' subresources, module imports,
  CSS, images, fonts, ``fetch``/XHR, HMR module updates.
- A root-absolute navigation (a link to ``/about``) from such a page gets a 307
  to ``/session/<id>/about`` (the worker knows the page from the referrer).
- WebSockets bypass service workers, so the worker prepends a few lines to
  Vite's client module (``/@vite/client``) that give that tab's ``WebSocket``
  the session prefix for same-origin root URLs: the HMR socket opens at
  ``/session/<id>/?token=…``.
- A navigation under ``/session/<id>/`` that no worker controls (no
  ``Service-Worker-Navigation-Preload`` header, which the worker turns on) gets
  a tiny bootstrap page that registers the worker and reloads. A browser that
  cannot run it sets the ``edge_tabs=off`` cookie for that session, and the
  cookie routing stays the fallback, as it is for curl and other clients
  without service workers. Host mode never needs any of this.
"""

from __future__ import annotations

import json

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from edge.routing import Match, MatchKind, iter_cookies

# Under /session/ but never a session (control's session ids are DNS labels plus a hash: no "_").
EDGE_SESSION_NAMESPACE = "/session/_edge"
WORKER_PATH = f"{EDGE_SESSION_NAMESPACE}/tab-worker.js"
OFF_COOKIE = "edge_tabs"
# Set by Chromium, Firefox and Safari on navigations a service worker with navigation preload controls.
PRELOAD_HEADER = "Service-Worker-Navigation-Preload"
# Set by the worker itself on navigations it forwards without navigation preload (older browsers).
TAB_HEADER = "X-Edge-Tab"
BOOTSTRAP_DESTS = ("document", "iframe")

Headers = CIMultiDictProxy[str] | CIMultiDict[str]


def needs_bootstrap(found: object, headers: Headers, enabled: bool = True) -> bool:
    """Whether this request is a browser navigation under a session prefix that no tab worker controls yet.

    Only browsers that send Fetch Metadata are bootstrapped: they send it only
    in secure contexts (https, localhost, 127.0.0.1), which is where service
    workers run. Everything else (curl, an old browser) is proxied as before.
    """
    if not enabled or not isinstance(found, Match) or found.kind is not MatchKind.PREFIX:
        return False
    if headers.get("Sec-Fetch-Mode") != "navigate" or headers.get("Sec-Fetch-Dest") not in BOOTSTRAP_DESTS:
        return False
    if PRELOAD_HEADER in headers or TAB_HEADER in headers:
        return False
    return not any(name == OFF_COOKIE and value == "off" for name, value in iter_cookies(headers.get("Cookie")))


def bootstrap_response(found: Match) -> web.Response:
    """The page a first navigation gets: register the tab worker, then load the same address again."""
    return web.Response(
        status=200,
        text=BOOTSTRAP_PAGE.replace("__PREFIX__", json.dumps(found.prefix + "/")).replace("__WORKER__", json.dumps(WORKER_PATH)),
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Edge-Session": found.session_id, "X-Edge-Tab-Bootstrap": "1"},
    )


async def worker_script(request: web.Request) -> web.Response:
    """The tab worker. ``Service-Worker-Allowed: /`` lets it control the whole origin from under /session/."""
    return web.Response(
        text=WORKER_SCRIPT,
        content_type="text/javascript",
        headers={"Service-Worker-Allowed": "/", "Cache-Control": "no-cache"},
    )


def setup(app: web.Application) -> None:
    """Serve the worker (before the proxy's catch-all; the fast path leaves ``/session/_edge/…`` alone: no such route)."""
    app.router.add_get(WORKER_PATH, worker_script)


BOOTSTRAP_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Opening the preview…</title><link rel="icon" href="data:,">
<style>body{font:16px/1.5 system-ui,sans-serif;margin:4em auto;max-width:32em;padding:0 1em;color:#444}</style>
</head><body><p>Opening the preview…</p><script>
(async () => {
  const prefix = __PREFIX__, worker = __WORKER__, key = "edge-tab-bootstrap";
  // Without a worker the edge routes by cookie: fine for one preview per browser.
  const fallback = () => { document.cookie = "edge_tabs=off; path=" + prefix + "; SameSite=Lax"; location.reload(); };
  try {
    const last = Number(sessionStorage.getItem(key) || 0);
    sessionStorage.setItem(key, String(Date.now()));
    if (!("serviceWorker" in navigator) || Date.now() - last < 10000) return fallback();
    const registration = await navigator.serviceWorker.register(worker, { scope: "/" });
    await navigator.serviceWorker.ready;
    const active = registration.active;
    if (active && active.state !== "activated") {
      await new Promise((done) => active.addEventListener("statechange", () => active.state === "activated" && done()));
    }
    location.reload();
  } catch (error) {
    fallback();
  }
})();
</script></body></html>
"""

# The worker is session-agnostic: it finds a request's session from the page that made it.
WORKER_SCRIPT = r"""// webordinary edge: keeps each tab on its own preview session (edge/tabs.py).
const SESSION = /^\/session\/([A-Za-z0-9_][A-Za-z0-9_.-]{0,63})(?:\/|$)/;
const EDGE_EXACT = new Set(["/api", "/health", "/metrics", "/_edge", "/session"]);
const EDGE_PREFIXES = ["/api/", "/_edge/", "/session/"];
const pages = new Map(); // clientId -> session: a page keeps its session after history.pushState to a root path

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    if (self.registration.navigationPreload) await self.registration.navigationPreload.enable();
    await self.clients.claim();
  })());
});

function sessionOf(address) {
  if (!address) return null;
  const url = new URL(address, self.location.href);
  if (url.origin !== self.location.origin) return null;
  const found = SESSION.exec(url.pathname);
  return found && found[1] !== "_edge" && !found[1].includes("..") ? found[1] : null;
}

function isEdgePath(path) {
  return EDGE_EXACT.has(path) || EDGE_PREFIXES.some((prefix) => path.startsWith(prefix));
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin) return;
  if (event.request.mode === "navigate") {
    onNavigate(event, url);
  } else if (!isEdgePath(url.pathname)) {
    event.respondWith(subresource(event, url));
  }
});

function onNavigate(event, url) {
  const request = event.request;
  const session = isEdgePath(url.pathname) ? null : sessionOf(request.referrer);
  if (session) {
    // A root-absolute link from a page of a session: into that session.
    event.waitUntil(Promise.resolve(event.preloadResponse).catch(() => {}));
    const location = `/session/${session}${url.pathname}${url.search}`;
    event.respondWith(new Response(null, { status: 307, headers: { Location: location, "X-Edge-Session": session } }));
  } else if (self.registration.navigationPreload) {
    event.respondWith(navigate(event));  // the preload request is the navigation, as the browser made it
  } else if (sessionOf(url.href)) {
    event.respondWith(navigate(event));  // marked, so the edge does not bootstrap again
  } // anything else: the browser navigates by itself
}

async function navigate(event) {
  const request = event.request;
  const preloaded = await event.preloadResponse;
  if (preloaded) return preloaded;
  // No navigation preload: forward it ourselves, marked, so the edge knows a worker is in charge.
  const headers = new Headers(request.headers);
  headers.set("X-Edge-Tab", "1");
  const init = { method: request.method, headers, credentials: "include", redirect: "manual", cache: request.cache };
  if (request.method !== "GET" && request.method !== "HEAD") init.body = await request.arrayBuffer();
  return fetch(request.url, init);
}

async function pageSession(clientId) {
  if (!clientId) return null;
  if (pages.has(clientId)) return pages.get(clientId);
  const client = await self.clients.get(clientId);
  const session = client ? sessionOf(client.url) : null;
  if (session) {
    if (pages.size > 500) pages.clear();
    pages.set(clientId, session);
  }
  return session;
}

async function subresource(event, url) {
  const request = event.request;
  const session = await pageSession(event.clientId);
  if (!session) return fetch(request);
  const init = {
    method: request.method,
    headers: request.headers,
    credentials: request.credentials,
    cache: request.cache,
    redirect: request.redirect,
    referrer: request.referrer,
    referrerPolicy: request.referrerPolicy,
    integrity: request.integrity,
    mode: request.mode,
    signal: request.signal,
  };
  if (request.method !== "GET" && request.method !== "HEAD") init.body = await request.arrayBuffer();
  const response = await fetch(`/session/${session}${url.pathname}${url.search}`, init);
  if (url.pathname === "/@vite/client" && response.status === 200) return withSocketPrefix(response, session);
  return response;
}

// WebSockets never pass through a service worker: give this tab's sockets the session prefix instead.
function socketShim(prefix) {
  return `;(() => { const P = ${JSON.stringify(prefix)}, W = globalThis.WebSocket;` +
    ` if (!W || W.edgeTab) return;` +
    ` class EdgeTabWebSocket extends W { constructor(url, protocols) {` +
    ` const u = new URL(url, location.href);` +
    ` if (u.host === location.host && !u.pathname.startsWith("/session/")) u.pathname = P + u.pathname;` +
    ` super(u.href, protocols); } }` +
    ` EdgeTabWebSocket.edgeTab = true; globalThis.WebSocket = EdgeTabWebSocket; })();`;
}

// Vite's client builds its socket URL (also used by its ping, which may run in a SharedWorker the shim
// never sees) as `${host}:${port}${"<hmr base>"}`: put the prefix into that base.
const SOCKET_BASE = /(const socketHost = `[^`\n]*\$\{)"(\/[^"]*)"(\}`)/;

async function withSocketPrefix(response, session) {
  const prefix = `/session/${session}`;
  const text = (await response.text()).replace(SOCKET_BASE, (all, head, base, tail) => head + JSON.stringify(prefix + base) + tail);
  const headers = new Headers(response.headers);
  headers.delete("Content-Length");
  headers.delete("Content-Encoding");
  headers.delete("ETag");
  return new Response(socketShim(prefix) + text, { status: 200, statusText: response.statusText, headers });
}
"""
