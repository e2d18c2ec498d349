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
- WebSockets bypass service workers, so the edge prepends a few lines to
  Vite's client module when it is asked for under a prefix
  (``/session/<id>/@vite/client``, as the worker asks for it) that give that
  tab's ``WebSocket`` the session prefix for same-origin root URLs, and puts
  the prefix into the client's socket base (Vite 7 pings from a SharedWorker
  the shim never sees): the HMR socket opens at ``/session/<id>/?token=…``.
  The edge does it, not the worker, so the browser gets an ordinary response
  it revalidates (304) and compiles from its code cache on a reload; the
  worker rewriting ~300 kB per page load was the largest part of its cost.
- A navigation under ``/session/<id>/`` that no worker controls (no
  ``Service-Worker-Navigation-Preload`` header, which the worker turns on) gets
  a tiny bootstrap page that registers the worker and reloads. A browser that
  cannot run it sets the ``edge_tabs=off`` cookie for that session, and the
  cookie routing stays the fallback, as it is for curl and other clients
  without service workers. Host mode never needs any of this.
"""

from __future__ import annotations

import json
import re

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


VITE_CLIENT = "/@vite/client"
# Vite's client builds its socket URL (also used by its ping, which may run in a SharedWorker the shim
# never sees) as `${host}:${port}${"<hmr base>"}`: the prefix goes into that base.
SOCKET_BASE = re.compile(rb'(const socketHost = `[^`\n]*\$\{)"(/[^"]*)"(\}`)')


def prefixes_vite_client(found: Match, enabled: bool) -> bool:
    """Whether this request is for Vite's client under a session prefix (the edge adds the socket prefix)."""
    return enabled and found.kind is MatchKind.PREFIX and found.upstream_path.partition("?")[0] == VITE_CLIENT


def vite_client_with_prefix(body: bytes, prefix: str) -> bytes:
    """Vite's client whose WebSockets to this origin open under ``prefix``.

    The same upstream body always gives the same result for one prefix (which
    is in the URL), so Vite's ``ETag`` still names it and revalidation works.
    """
    base = lambda m: m.group(1) + json.dumps(prefix + m.group(2).decode()).encode() + m.group(3)  # noqa: E731
    return SOCKET_SHIM.replace("__PREFIX__", json.dumps(prefix)).encode() + SOCKET_BASE.sub(base, body, count=1)


# WebSockets never pass through a service worker: give this tab's sockets the session prefix instead.
SOCKET_SHIM = (
    ";(() => { const P = __PREFIX__, W = globalThis.WebSocket;"
    " if (!W || W.edgeTab) return;"
    " class EdgeTabWebSocket extends W { constructor(url, protocols) {"
    " const u = new URL(url, location.href);"
    ' if (u.host === location.host && !u.pathname.startsWith("/session/")) u.pathname = P + u.pathname;'
    " super(u.href, protocols); } }"
    " EdgeTabWebSocket.edgeTab = true; globalThis.WebSocket = EdgeTabWebSocket; })();"
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

function remember(clientId, session) {
  if (!clientId || !session) return;
  if (pages.size > 500) pages.clear();
  pages.set(clientId, session);
}

function onNavigate(event, url) {
  const request = event.request;
  remember(event.resultingClientId, sessionOf(url.href));  // the page's requests then need no clients.get()
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

// The page's session: from the referrer when it names one (the page, or a module loaded under the prefix),
// else from what the tab's navigation said, else (a page loaded before this worker) from the client's URL.
async function pageSession(event) {
  const named = sessionOf(event.request.referrer);
  if (named) return named;
  const clientId = event.clientId;
  if (!clientId) return null;
  if (pages.has(clientId)) return pages.get(clientId);
  const client = await self.clients.get(clientId);
  const session = client ? sessionOf(client.url) : null;
  remember(clientId, session);
  return session;
}

async function subresource(event, url) {
  const request = event.request;
  const session = await pageSession(event);
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
  return fetch(`/session/${session}${url.pathname}${url.search}`, init);  // /@vite/client: the edge adds the socket prefix
}
"""
