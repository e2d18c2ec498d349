"""What a preview's address shows while the preview is not ready: a page for site owners, JSON for machines.

A site owner opening a preview link sees plain words and the stage the preview
is in (installing dependencies, starting, ready), never server paths, tokens
or npm's output (the full log is on the operator page). The page asks
``/session/_edge/status/<id>`` every two seconds, which always answers 200, and
loads the preview once it is ready: no self-reloads into 503s, so nothing is
logged to the browser's console while it waits. A failed start says what to do.

Browser navigations (``Sec-Fetch-Mode: navigate``, or over plain http
``Upgrade-Insecure-Requests: 1``) get this page with status 200 (Chromium
logs every 5xx document as a console error); every other client
still gets 503 with ``Retry-After`` (502 when the start failed) and the JSON
or HTML answer of :mod:`edge.errors`.
"""

from __future__ import annotations

import json

from aiohttp import web

from edge import keys
from edge.errors import error_response
from edge.routing import Route, RouteState
from preview.appkeys import PREVIEWS

# Under /session/ but never a session (session ids are DNS labels plus a hash: no "_").
STATUS_PATH = "/session/_edge/status/{session}"
POLL_MS = 2000

# Each stage: (heading, what is happening, step number of 3).
STAGES = {
    "installing": ("Installing the site's dependencies", "The site's packages are being downloaded. The first time takes a minute or two.", 1),
    "starting": ("Starting the site", "The site's development server is starting. This takes a few seconds.", 2),
    "ready": ("Ready", "Opening the site…", 3),
}


def stage_of(app: web.Application, session_id: str, route: Route | None) -> str:
    """``installing``, ``starting``, ``ready``, ``failed`` or ``gone`` (no such session)."""
    if route is None:
        return "gone"
    if route.state is RouteState.FAILED:
        return "failed"
    if route.state is RouteState.READY and route.target is not None:
        return "ready"
    supervisor = app.get(PREVIEWS)
    preview = supervisor.get(session_id) if supervisor is not None else None
    if preview is not None and preview.state.value == "installing":
        return "installing"
    return "starting"


def failure_advice(app: web.Application, session_id: str, route: Route) -> tuple[str, str]:
    """What went wrong and what to do, in words a site owner can act on (never the raw log)."""
    supervisor = app.get(PREVIEWS)
    preview = supervisor.get(session_id) if supervisor is not None else None
    error = (preview.error if preview is not None else route.detail).lower()
    if "node" in error and ("needs node" in error or "node_binary" in error):
        return (
            "This server's Node.js cannot run the site.",
            "This is a setting on the server, not a problem with your site: please tell whoever runs your previews.",
        )
    if "npm" in error or "pnpm" in error or "yarn" in error or "install" in error or "package.json" in error:
        return (
            "Installing the site's dependencies failed.",
            "Check that package.json and its lock file are committed and agree with each other, "
            "for example by running the install on your own computer and committing the lock file. Then try again.",
        )
    return (
        "The site stopped with an error while starting.",
        "A recent change may have broken the site: ask for that change to be fixed or undone, then try again.",
    )


def is_browser_navigation(request: web.Request) -> bool:
    """A browser loading a page: Fetch Metadata says so (secure contexts), or, over plain http where
    browsers send none, ``Upgrade-Insecure-Requests: 1`` with an HTML ``Accept`` (curl sends neither)."""
    mode = request.headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    return request.headers.get("Upgrade-Insecure-Requests") == "1" and "text/html" in request.headers.get("Accept", "")


def unavailable(request: web.Request, route: Route) -> web.StreamResponse | None:
    """The answer for a session whose preview cannot take requests yet (None when it can)."""
    starting = route.state is RouteState.STARTING or (route.state is RouteState.READY and route.target is None)
    failed = route.state is RouteState.FAILED
    if not starting and not failed:
        return None
    if is_browser_navigation(request) and request.method in ("GET", "HEAD"):
        return _page(request, route)
    if failed:
        return error_response(
            request,
            502,
            "The preview failed to start.",
            "Fix the error shown below, then restart the preview.",
            extra={"state": route.state.value, "log": route.detail},
        )
    return error_response(
        request,
        503,
        "The preview is starting.",
        "This page reloads by itself when it is ready.",
        retry_after=route.retry_after,
        refresh=True,
        extra={"state": route.state.value, "log": route.detail} if route.detail else {"state": route.state.value},
    )


def _page(request: web.Request, route: Route) -> web.Response:
    stage = stage_of(request.app, route.session_id, route)
    failure = failure_advice(request.app, route.session_id, route) if stage == "failed" else ("", "")
    text = (
        PAGE.replace("__STATUS__", _js(STATUS_PATH.format(session=route.session_id)))
        .replace("__STAGES__", _js(STAGES))
        .replace("__STAGE__", _js(stage))
        .replace("__FAILURE__", _js(failure))
        .replace("__POLL__", str(POLL_MS))
    )
    return web.Response(
        text=text,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Retry-After": str(route.retry_after), "X-Edge-Preview-Stage": stage},
    )


def _js(value: object) -> str:
    """A JSON value safe inside a <script> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


async def status(request: web.Request) -> web.Response:
    """``{"stage": ...}`` for the waiting page; always 200 so the browser logs nothing while it polls.

    Asking counts as a request for the preview (as reloading the page would):
    a preview that stopped meanwhile is started again.
    """
    session_id = request.match_info["session"]
    route = await request.app[keys.SESSIONS].lookup(session_id)
    stage = stage_of(request.app, session_id, route)
    body: dict = {"stage": stage}
    if stage == "failed" and route is not None:
        body["problem"], body["advice"] = failure_advice(request.app, session_id, route)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    app.router.add_get(STATUS_PATH, status)


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Preparing your preview…</title><link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
[hidden]{display:none!important}body{font:17px/1.5 system-ui,sans-serif;color:#222;background:#fafafa;margin:0}
main{max-width:34em;margin:12vh auto;padding:2em;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}
h1{font-size:1.4em;margin:0 0 .3em}
ol{list-style:none;padding:0;margin:1.5em 0 0;display:flex;gap:.5em}
li{flex:1;padding:.4em .6em;border-radius:6px;background:#eee;color:#777;font-size:.85em;text-align:center}
li.done{background:#dff3e4;color:#1d6b34}li.now{background:#dbe9ff;color:#1a4fa0;font-weight:600}
.failed h1{color:#a4262c}button{font:inherit;margin-top:1em;padding:.4em 1.2em;border-radius:6px;border:1px solid #888;background:#fff;cursor:pointer}
</style></head><body><main id="box" aria-live="polite">
<h1 id="heading">Preparing your preview…</h1><p id="detail">This page opens the site by itself when it is ready.</p>
<ol id="steps"><li data-stage="installing">1. Installing</li><li data-stage="starting">2. Starting</li><li data-stage="ready">3. Ready</li></ol>
<p id="advice" hidden></p><button id="retry" type="button" hidden>Try again</button>
</main><script>
(() => {
  const statusUrl = __STATUS__, stages = __STAGES__, poll = __POLL__;
  const $ = (id) => document.getElementById(id);
  function show(stage, failure) {
    document.body.dataset.stage = stage;
    if (stage === "failed") {
      $("box").className = "failed";
      $("heading").textContent = failure[0] || "The preview could not start.";
      $("detail").textContent = "What to do:";
      $("advice").textContent = failure[1] || "Try again in a moment.";
      $("advice").hidden = false; $("retry").hidden = false; $("steps").hidden = true;
      return;
    }
    if (stage === "gone") {
      $("heading").textContent = "This preview no longer exists.";
      $("detail").textContent = "Ask for a new preview link.";
      $("steps").hidden = true;
      return;
    }
    const [heading, detail, step] = stages[stage] || stages.starting;
    $("heading").textContent = heading; $("detail").textContent = detail;
    for (const item of document.querySelectorAll("#steps li")) {
      const n = stages[item.dataset.stage][2];
      item.className = n < step ? "done" : n === step ? "now" : "";
    }
  }
  async function check() {
    try {
      const answer = await fetch(statusUrl, { cache: "no-store", headers: { Accept: "application/json" } });
      const body = await answer.json();
      show(body.stage, [body.problem, body.advice]);
      if (body.stage === "ready") { location.reload(); return; }
      if (body.stage === "failed" || body.stage === "gone") return;
    } catch (error) { /* the edge restarts or the network blinks: ask again */ }
    setTimeout(check, poll);
  }
  $("retry").addEventListener("click", () => location.reload());
  show(__STAGE__, __FAILURE__);
  if (__STAGE__ !== "failed" && __STAGE__ !== "gone") setTimeout(check, poll);
})();
</script></body></html>
"""
