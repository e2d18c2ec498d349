"""``edge demo``: try the whole loop locally with one command (no AWS, no GitHub).

It makes a demo workspace (``./workspace-demo`` by default) holding

* ``site.git``: a bare repository whose ``main`` is a copy of ``examples/site``
  (the example site itself is only read), standing in for GitHub;
* ``workspace/``: the edge's ``WORKSPACE_PATH`` (clones, worktrees, logs,
  the shared ``node_modules`` store);

then serves the edge with local remotes allowed (a settings override), asks
its own ``POST /api/init`` over HTTP for a thread, starts that thread's
preview and prints where to look and how to make an edit. Running it again
reuses the workspace. Ctrl-C or SIGTERM stops it like ``edge serve``.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TextIO

import aiohttp
import anyio

from core import processes
from edge import eventloop
from edge.proxylog import ProxyLog
from edge.settings import Settings

EXAMPLE_SITE = Path(__file__).resolve().parents[1] / "examples" / "site"
CLIENT_ID, USER_ID, THREAD_ID = "demo", "owner", "welcome"
LISTEN_TIMEOUT = 30.0
PREVIEW_TIMEOUT = 900.0  # the first start may run `npm ci`
SKIP = ("node_modules", ".astro", "dist", ".git")


def make_remote(site: Path, bare: Path, settings: Settings) -> None:
    """A bare repository whose ``main`` holds ``site``'s files; kept when it already has ``main``."""
    if _git(["rev-parse", "--verify", "-q", "refs/heads/main"], bare, check=False) == 0:
        return
    stage = bare.parent / f".site-{uuid.uuid4().hex[:8]}"
    partial = bare.parent / f"{bare.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(site, stage, ignore=shutil.ignore_patterns(*SKIP))
        _git(["init", "-q", "--bare", "-b", "main", str(partial)], bare.parent)
        _git(["config", "uploadpack.allowFilter", "true"], partial)  # the edge clones blob-less
        _git(["init", "-q", "-b", "main"], stage)
        _git(["add", "--all"], stage)
        _git(
            ["-c", f"user.name={settings.git_user_name}", "-c", f"user.email={settings.git_user_email}",
             "commit", "-q", "--no-gpg-sign", "-m", "The example site"],
            stage,
        )
        _git(["push", "-q", str(partial), "main"], stage)
        shutil.rmtree(bare, ignore_errors=True)
        partial.rename(bare)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)


def _git(args: list[str], cwd: Path, check: bool = True) -> int:
    """Run git (an argument list, hooks off) quietly; raise with its message on failure when ``check``."""
    if not cwd.is_dir():
        return 128
    result = anyio.run(partial(processes.run, ["git", "-c", "core.hooksPath=/dev/null", *args], cwd=cwd, timeout=None))
    if check and result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.decode('utf-8', 'replace').strip()}")
    return result.returncode


def demo_settings(base: Settings, workspace: Path, host: str, port: int) -> Settings:
    """The edge's settings for the demo: local remotes allowed, never stopping by itself."""
    return replace(
        base,
        host=host,
        port=port,
        workspace_path=workspace / "workspace",
        git_allow_local=True,
        auto_shutdown_minutes=0.0,
    )


def execute_curl(origin: str, token_set: bool) -> str:
    """A ready ``curl`` for ``POST /api/execute`` on the demo thread (the token only by name)."""
    body = json.dumps(
        {"instruction": "Add a line saying hello from the demo", "clientId": CLIENT_ID, "userId": USER_ID, "threadId": THREAD_ID}
    )
    auth = ' -H "Authorization: Bearer $EDGE_API_TOKEN"' if token_set else ""
    return f"curl -s {origin}/api/execute -H 'Content-Type: application/json'{auth} -d {shlex.quote(body)}"


class DemoClient:
    """Talks to the demo's own edge over HTTP, as Hermes would."""

    def __init__(self, client: aiohttp.ClientSession, settings: Settings) -> None:
        self.client = client
        self.origin = f"http://127.0.0.1:{settings.port}"
        self.headers = {"Host": f"localhost:{settings.port}"}
        if settings.api_token:
            self.headers["Authorization"] = f"Bearer {settings.api_token}"

    async def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        async with self.client.request(method, self.origin + path, json=body, headers=self.headers) as resp:
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, {"error": (await resp.text())[:500]}


async def _listening(client: aiohttp.ClientSession, settings: Settings, server: asyncio.Task) -> bool:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while time.monotonic() < deadline and not server.done():
        try:
            async with client.get(f"http://127.0.0.1:{settings.port}/health") as resp:
                if resp.status == 200:
                    return True
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    return False


async def _set_up(settings: Settings, repo_url: str, server: asyncio.Task, out: TextIO, log_path: Path | None = None) -> int:
    """Init the demo thread, start its preview, print the URLs; 0, or 1 after printing why not."""
    thread = f"{CLIENT_ID}/{USER_ID}/{THREAD_ID}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        if not await _listening(http, settings, server):
            return 1
        api = DemoClient(http, settings)
        status, init = await api.call(
            "POST", "/api/init", {"clientId": CLIENT_ID, "userId": USER_ID, "threadId": THREAD_ID, "repoUrl": repo_url}
        )
        if status != 200 or not init.get("success"):
            print(f"edge demo: /api/init failed ({status}): {init.get('error')}", file=sys.stderr)
            return 1
        session = init["sessionId"]
        status, started = await api.call("POST", f"/api/astro/start/{thread}?wait=0")
        if status >= 400:
            print(f"edge demo: starting the preview failed ({status}): {started.get('error')}", file=sys.stderr)
            return 1
        origin = f"http://localhost:{settings.port}"
        print(
            "\nwebordinary edge demo\n"
            f"  workspace        {settings.workspace_path.parent}\n"
            f"  repository       {repo_url} (a copy of the example site; branch {init['branch']})\n"
            f"  worktree         {init['workspacePath']}\n\n"
            f"  Preview:         {origin}/session/{session}/\n"
            f"  Host mode:       http://{session}.localhost:{settings.port}/\n"
            f"  Operator page:   {origin}/_edge/\n"
            f"  Proxy log:       {log_path or 'printed here (--verbose)'}\n\n"
            "  Make an edit (the simulation executor: no model, no credentials) and watch the preview change:\n"
            f"  {execute_curl(origin, settings.api_token is not None)}\n",
            file=out,
            flush=True,
        )
        return await _report_preview(api, thread, server, out)


async def _report_preview(api: DemoClient, thread: str, server: asyncio.Task, out: TextIO) -> int:
    """Print the preview's state changes until it is ready or failed."""
    deadline = time.monotonic() + PREVIEW_TIMEOUT
    last = ""
    while time.monotonic() < deadline and not server.done():
        _, status = await api.call("GET", f"/api/astro/status/{thread}")
        state = status.get("state", "")
        if state != last:
            last = state
            if state == "ready":
                print(f"  Preview ready (Astro {status.get('astroVersion')}, Node {status.get('nodeVersion')}). Ctrl-C stops the demo.", file=out, flush=True)
                return 0
            if state == "failed":
                tail = "\n    ".join(status.get("logTail") or [])
                print(f"  The preview failed: {status.get('error')}\n    {tail}", file=out, flush=True)
                return 0  # the edge keeps serving: the operator page shows the log
            hint = " (the first start installs Astro with npm: a minute or two; later starts reuse it)" if state == "installing" else ""
            print(f"  Preview {state}…{hint}", file=out, flush=True)
        await asyncio.sleep(0.5)
    return 0


def demo_proxy_log(settings: Settings, verbose: bool) -> tuple[ProxyLog, Path | None]:
    """The proxy's JSON lines: in ``<demo>/proxy.log``, so the banner stays readable; on stdout with ``--verbose``."""
    from edge.app import proxy_log_for
    from edge.proxylog import JsonLines

    if verbose:
        return proxy_log_for(settings), None
    path = settings.workspace_path.parent / "proxy.log"
    stream = path.open("a", encoding="utf-8")
    return ProxyLog([JsonLines(stream)]), path


async def run_demo(settings: Settings, repo_url: str, out: TextIO = sys.stdout, *, verbose: bool = False) -> int:
    """Serve the edge (``edge serve``'s stop handling) and set up the demo thread once it listens."""
    from edge.server import serve

    proxy_log, log_path = demo_proxy_log(settings, verbose)
    server = asyncio.create_task(serve(settings, proxy_log=proxy_log), name="edge")
    try:
        code = await _set_up(settings, repo_url, server, out, log_path)
    except aiohttp.ClientError as exc:
        if not server.done():
            print(f"edge demo: talking to the edge failed: {exc}", file=sys.stderr)
        code = 1
    if code != 0 and not server.done():
        server.cancel()
    try:
        await server
    except asyncio.CancelledError:
        pass
    return code


def main(workspace: Path, site: Path, settings: Settings, verbose: bool = False) -> int:
    """``edge demo``: prepare the workspace and its local remote, then serve until stopped."""
    if not (site / "package.json").is_file():
        print(f"edge demo: {site} is not an npm project (no package.json)", file=sys.stderr)
        return 2
    workspace = workspace.absolute()
    workspace.mkdir(parents=True, exist_ok=True)
    bare = workspace / "site.git"
    try:
        make_remote(site, bare, settings)
    except (OSError, RuntimeError) as exc:
        print(f"edge demo: could not make the local repository: {exc}", file=sys.stderr)
        return 1
    return eventloop.run(run_demo(settings, f"file://{bare}", verbose=verbose), settings.event_loop)
