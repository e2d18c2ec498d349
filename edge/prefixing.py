"""Per-tab sessions in prefix mode: the edge gives a page's root-absolute URLs the session prefix.

A preview page lives at ``/session/<id>/…``, but Astro and Vite write
root-absolute URLs into its HTML and into every module's imports
(``/@vite/client``, ``/src/…``, ``/node_modules/…``), and Vite's client opens
its HMR socket at ``/?token=…`` (Astro's ``base`` never reaches Vite). A
per-browser cookie cannot route those: two previews open in two tabs would
answer each other's requests. So what the edge proxies under a prefix is
rewritten where the edge already knows the session:

- HTML: ``src``, ``href``, ``srcset``, ``action``, ``poster`` and Astro
  islands' ``component-url``/``renderer-url``/``before-hydration-url``
  attributes that start with one ``/`` (not ``/session/``, not ``//host``);
- JavaScript modules: the specifiers of static ``import``/``export … from``
  statements and of ``import("/…")``, as Vite's import analysis writes them;
- Vite's client, in addition: its ``base`` (HMR re-imports, CSS link updates)
  and its socket base, and a few lines that give the tab's other same-origin
  WebSockets the prefix (Vite 7 pings from a SharedWorker those lines never
  see, hence the socket base too).

Every module of a page is then asked for under the prefix, so none is loaded
twice under two URLs. ``createHotContext("/src/…")`` keeps its unprefixed
path: it is the id Vite's HMR messages use, not a URL. What no rewrite reaches
(a ``fetch("/data.json")`` built at run time, a CSS ``url(/font.woff)``) names
the page in its ``Referer``, which :func:`edge.routing.referrer_session`
routes; the cookie is the last resort (curl, ``Referrer-Policy: no-referrer``).

A rewrite depends only on the upstream body and the prefix, which is in the
URL, so Vite's ``ETag`` still names the result and revalidation (304) works.
"""

from __future__ import annotations

import json
import re

from multidict import CIMultiDict, CIMultiDictProxy

from edge.routing import Match, MatchKind

Headers = CIMultiDictProxy[str] | CIMultiDict[str]

# Sec-Fetch-Dest of the requests whose answers are rewritten: pages, frames and scripts (module imports).
REWRITTEN_DESTS = frozenset({"document", "iframe", "frame", "script", "worker", "sharedworker"})
# Modules bigger than this pass unchanged (what they ask for is routed by its Referer); pages stream.
MAX_BODY = 8 * 1024 * 1024
# A page's text after its last ``<`` is held for the next chunk while no ``>`` follows, up to this much.
MAX_HELD = 64 * 1024
VITE_CLIENT = "/@vite/client"

# A root-absolute URL that does not already name a session or another host.
_ROOT = rb"/(?!/|session/)"
_URL_ATTRIBUTES = rb"src|href|action|formaction|poster|data|component-url|renderer-url|before-hydration-url"
_TAG = re.compile(rb"<[a-zA-Z][^<>]*>")
_URL_ATTR = re.compile(rb"""(\s(?:""" + _URL_ATTRIBUTES + rb""")\s*=\s*)(["']?)(""" + _ROOT + rb")")
_SRCSET = re.compile(rb"""(\s(?:srcset|imagesrcset)\s*=\s*)(["'])([^"']*)\2""")
_SRCSET_URL = re.compile(rb"(^|,\s*)(" + _ROOT + rb")")
# What precedes an import specifier: `import x from "/…"`, `export { y } from "/…"`, `import "/…"`, `import("/…")`.
_SPECIFIER_BEFORE = re.compile(rb"""(?:\bfrom\s*|\bimport\s*\(\s*|(?:^|[;}\n])\s*import\s*)$""")
_LOOK_BACK = 64
# Vite's client: `const base = "/" || "/";` and its socket URL `${host}:${port}${"<hmr base>"}`.
_CLIENT_BASE = re.compile(rb'(const base(?:\$\d+)? = )"(/[^"]*)"')
_SOCKET_BASE = re.compile(rb'(const socketHost = `[^`\n]*\$\{)"(/[^"]*)"(\}`)')
# WebSockets the page opens to its own origin at a root path get the tab's prefix.
SOCKET_SHIM = (
    ";(() => { const P = __PREFIX__, W = globalThis.WebSocket;"
    " if (!W || W.edgeTab) return;"
    " class EdgeTabWebSocket extends W { constructor(url, protocols) {"
    " const u = new URL(url, location.href);"
    ' if (u.host === location.host && !u.pathname.startsWith("/session/")) u.pathname = P + u.pathname;'
    " super(u.href, protocols); } }"
    " EdgeTabWebSocket.edgeTab = true; globalThis.WebSocket = EdgeTabWebSocket; })();"
)


def wanted(found: object, headers: Headers, enabled: bool) -> bool:
    """Whether the answer to this request may be rewritten: a page or module asked for under a session prefix.

    Browsers say what they load in ``Sec-Fetch-Dest`` (in secure contexts:
    https, localhost); without it, a request that accepts HTML is taken for a page.
    """
    if not enabled or not isinstance(found, Match) or found.kind is not MatchKind.PREFIX:
        return False
    path = found.upstream_path.partition("?")[0]
    if path == VITE_CLIENT:
        return True
    dest = headers.get("Sec-Fetch-Dest")
    if dest is not None:
        return dest in REWRITTEN_DESTS
    return "text/html" in headers.get("Accept", "")


def treatment(found: object, request: Headers, enabled: bool, status: int, response: Headers) -> str | None:
    """How an upstream's answer is passed on, the one rule of both proxy paths: ``"html"`` (a page,
    rewritten as it streams), ``"js"`` (a module, read whole and rewritten), or None (unchanged).

    Only a 200 of a wanted request, uncompressed; a module announced bigger
    than ``MAX_BODY`` passes unchanged (one that turns out bigger does too).
    A reload's 304s, and every answer outside a prefix, are decided by the first test.
    """
    if status != 200 or "Content-Encoding" in response or not wanted(found, request, enabled):
        return None
    kind = kind_of(response.get("Content-Type", ""))
    if kind == "js":
        length = response.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            return None
    return kind


def kind_of(content_type: str) -> str | None:
    """``"html"``, ``"js"`` or None (passed unchanged) from a response's ``Content-Type``."""
    media = content_type.partition(";")[0].strip().lower()
    if media == "text/html":
        return "html"
    if media in ("text/javascript", "application/javascript", "application/x-javascript"):
        return "js"
    return None


def rewrite(body: bytes, kind: str, prefix: str, upstream_path: str) -> bytes:
    """``body`` with its root-absolute URLs under ``prefix`` (``/session/<id>``)."""
    mark = prefix.encode()
    if kind == "html":
        return rewrite_html(body, mark)
    body = rewrite_module(body, mark)
    if upstream_path.partition("?")[0] == VITE_CLIENT:
        body = vite_client_with_prefix(body, prefix)
    return body


def rewrite_html(body: bytes, prefix: bytes) -> bytes:
    """An HTML page whose tags' URL attributes name the session (text and scripts' contents are left alone)."""

    def tag(m: re.Match[bytes]) -> bytes:
        text = _URL_ATTR.sub(lambda a: a.group(1) + a.group(2) + prefix + a.group(3), m.group(0))
        return _SRCSET.sub(lambda a: a.group(1) + a.group(2) + _SRCSET_URL.sub(lambda u: u.group(1) + prefix + u.group(2), a.group(3)) + a.group(2), text)

    return _TAG.sub(tag, body)


class PageRewriter:
    """A page rewritten as it streams, so the browser starts on its head while the dev server renders the rest.

    Each chunk's tags are rewritten at once; the text from the chunk's last
    ``<`` is held for the next chunk when no ``>`` follows it (a tag cut in
    two). Cutting only at a ``<`` gives exactly what rewriting the whole page
    gives: no match of ``_TAG`` holds a ``<`` after its first byte.
    """

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk if self.held else chunk
        cut = data.rfind(b"<")
        if cut < 0 or data.find(b">", cut) >= 0 or len(data) - cut > MAX_HELD:
            self.held = b""
            return rewrite_html(data, self.prefix)
        self.held = data[cut:]
        return rewrite_html(data[:cut], self.prefix)

    def close(self) -> bytes:
        held, self.held = self.held, b""
        return rewrite_html(held, self.prefix)


def rewrite_module(body: bytes, prefix: bytes) -> bytes:
    """A JavaScript module whose import specifiers name the session.

    Candidates are found with ``bytes.find`` (a quote followed by ``/``: few in
    a module, and C-speed to find), then the text just before each is checked:
    a regular expression over the whole body took 4-5 times as long (about
    10 ms for Vite's 300 kB client).
    """
    starts: list[int] = []
    for quote in (b'"/', b"'/"):
        at = body.find(quote)
        while at >= 0:
            starts.append(at + 1)
            at = body.find(quote, at + 2)
    if not starts:
        return body
    pieces: list[bytes] = []
    last = 0
    for at in sorted(starts):
        if body.startswith((b"//", b"/session/"), at) or not _SPECIFIER_BEFORE.search(body, max(0, at - 1 - _LOOK_BACK), at - 1):
            continue
        pieces += (body[last:at], prefix)
        last = at
    if not pieces:
        return body
    pieces.append(body[last:])
    return b"".join(pieces)


def vite_client_with_prefix(body: bytes, prefix: str) -> bytes:
    """Vite's client whose HMR re-imports, CSS updates and WebSockets to this origin go under ``prefix``."""
    prefixed = lambda m: m.group(1) + json.dumps(prefix + m.group(2).decode()).encode()  # noqa: E731
    body = _CLIENT_BASE.sub(prefixed, body)
    body = _SOCKET_BASE.sub(lambda m: prefixed(m) + m.group(3), body, count=1)
    return SOCKET_SHIM.replace("__PREFIX__", json.dumps(prefix)).encode() + body
