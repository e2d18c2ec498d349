"""One supervised Astro dev server per thread, started on demand, stopped when idle.

A preview moves through ``stopped → installing → starting → ready``; a dev
server that dies after it was ready is ``crashed`` and restarted with
exponential backoff a bounded number of times; a start that cannot succeed
(broken config, Node too old, timeout) is ``failed`` with the reason and the
last log lines in its status. Each preview has exactly one task that owns its
process: starting is single flight because the state turns ``starting``
before anything awaits, and stopping cancels that task, whose clean-up
removes the route (closing the session's WebSockets) and stops the process
group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import aiohttp
from yarl import URL

from core.processes import Child
from preview.deps import DependencyStore
from preview.locator import Locator
from preview.logs import LogTail
from preview.node import AstroInstall, PreviewError, astro_install, check_engines, child_env
from preview.nodes import NodeFinder, fits, site_engines
from preview.packages import detect, dev_script, is_plain_astro_dev
from preview.ports import NoFreePort, PortPool
from preview.process import spawn
from preview.procs import group_members, rss_bytes
from preview.routes import PreviewRoute, RouteState, RouteTable
from preview.settings import PreviewSettings

LOG_FILE_TAIL_BYTES = 256 * 1024  # read from the end of a log file for its last lines
log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # crashes in a row before a preview is failed
STABLE_SECONDS = 60.0  # a server that was ready this long has its crash count reset
FAILED_RETRY_SECONDS = 15.0  # a failed preview is retried on demand after this
PORT_ATTEMPTS = 3
POLL_INTERVAL = 0.15
PORT_TAKEN = "is in use, trying another one"  # Vite moves to another port instead of failing


class PreviewState(str, Enum):
    STOPPED = "stopped"
    INSTALLING = "installing"
    STARTING = "starting"
    READY = "ready"
    CRASHED = "crashed"
    FAILED = "failed"


RUNNING = frozenset({PreviewState.INSTALLING, PreviewState.STARTING, PreviewState.READY, PreviewState.CRASHED})
SETTLED = frozenset({PreviewState.READY, PreviewState.FAILED, PreviewState.STOPPED})


@dataclass(eq=False)
class Preview:
    """One thread's dev server and everything known about it."""

    session_id: str
    folder: Path
    log: LogTail
    state: PreviewState = PreviewState.STOPPED
    error: str = ""
    port: int | None = None
    process: Child | None = None
    restarts: int = 0
    install: str = ""
    node_binary: str = ""
    dev_command: str = ""  # what runs the dev server, in words (status and log)
    astro_version: str = ""
    node_version: str = ""
    started_at: float | None = None  # wall clock, for status
    start_clock: float = 0.0
    ready_at: float = 0.0
    changed_at: float = field(default_factory=time.monotonic)
    last_request: float = field(default_factory=time.monotonic)
    task: asyncio.Task | None = None
    stopping: bool = False  # the old task is still tearing down: a start must wait for it
    start_pending: bool = False  # asked to start while stopping: start once stopped
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def set_state(self, state: PreviewState, error: str = "") -> None:
        self.state = state
        self.error = error
        self.changed_at = time.monotonic()
        if state in SETTLED:
            self.settled.set()
        else:
            self.settled.clear()

    def route(self) -> PreviewRoute:
        """What the proxy should do with a request for this session now."""
        if self.state is PreviewState.READY and self.port is not None and not self.stopping:
            return PreviewRoute(self.session_id, _target(self.port), RouteState.READY, root=self.folder)
        if self.state is PreviewState.FAILED:
            detail = self.error + ("\n\n" + self.log.text(30) if self.log.count else "")
            return PreviewRoute(self.session_id, None, RouteState.FAILED, detail=detail)
        headline = {
            PreviewState.INSTALLING: "Installing dependencies…",
            PreviewState.CRASHED: f"The dev server stopped unexpectedly; restarting… {self.error}",
        }.get(self.state, "Starting preview…")
        return PreviewRoute(
            self.session_id,
            None,
            RouteState.STARTING,
            detail=headline + "\n\n" + self.log.text(15),
            retry_after=2,
        )


def _astro_engines(folder: Path) -> str | None:
    """Astro's own engines.node, when the site's Astro is installed already."""
    try:
        return astro_install(folder).engines
    except PreviewError:
        return None


def _target(port: int) -> URL:
    return URL.build(scheme="http", host="127.0.0.1", port=port)


class PreviewSupervisor:
    """Starts, watches and stops the previews of one edge."""

    def __init__(self, settings: PreviewSettings, table: RouteTable, locator: Locator) -> None:
        self.settings = settings
        self.table = table
        self.locator = locator
        self.ports = PortPool(settings.astro_port)
        self.deps = DependencyStore(settings)
        self.nodes = NodeFinder(settings, self.deps.npm_cache)
        self.log_dir = settings.workspace_path / ".edge" / "logs"
        self.previews: dict[str, Preview] = {}
        self._client: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task | None = None
        self.build_locks: defaultdict[Path, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._closing = False

    # -- lifecycle of the supervisor -------------------------------------------------

    async def open(self) -> None:
        self._client = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=2.0),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        self._reaper = asyncio.create_task(self._reap_idle(), name="preview idle reaper")

    async def close(self) -> None:
        """Stop every dev server (the edge is stopping): nothing may outlive it."""
        self._closing = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait({self._reaper})
        await asyncio.gather(
            *(self.stop(sid, "the edge is stopping") for sid in list(self.previews)), return_exceptions=True
        )
        await self.deps.close()
        if self._client is not None:
            await self._client.close()
        for preview in self.previews.values():
            preview.log.close()

    # -- the public operations ---------------------------------------------------------

    def get(self, session_id: str) -> Preview | None:
        return self.previews.get(session_id)

    def log_lines(self, session_id: str, count: int) -> list[str]:
        """The last lines of a preview's log: from memory, else from its file (a preview run before a restart)."""
        preview = self.previews.get(session_id)
        if preview is not None and preview.log.count:
            return preview.log.tail(count)
        path = self.log_dir / f"{session_id}.log"
        try:
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - LOG_FILE_TAIL_BYTES))
                data = handle.read()
        except OSError:
            return []
        return data.decode("utf-8", "replace").splitlines()[-count:] if count else []

    def track(self, session_id: str, folder: Path) -> Preview:
        """The session's preview record (created stopped), so its log can be followed before it starts."""
        preview = self.previews.get(session_id)
        if preview is None:
            preview = Preview(session_id, folder, LogTail(self.log_dir / f"{session_id}.log"))
            self.previews[session_id] = preview
        return preview

    def ensure(self, session_id: str, folder: Path) -> Preview:
        """The session's preview, started unless it is already on its way (single flight)."""
        preview = self.track(session_id, folder)
        preview.last_request = time.monotonic()
        if preview.state in RUNNING and not preview.stopping:
            return preview
        if self._closing:
            raise PreviewError("the edge is stopping")
        preview.folder = folder
        if preview.stopping:
            preview.start_pending = True  # one process per preview: start when the old one is gone
            preview.settled.clear()
            return preview
        preview.restarts = 0
        preview.started_at = time.time()
        preview.start_clock = time.monotonic()
        preview.set_state(PreviewState.STARTING)
        preview.task = asyncio.create_task(self._run(preview), name=f"preview {session_id}")
        return preview

    async def start(self, session_id: str, folder: Path, wait: float | None = None) -> Preview:
        """Ensure the preview runs and wait (at most ``wait`` seconds) until it is ready or failed."""
        preview = self.ensure(session_id, folder)
        limit = self.settings.astro_start_timeout + 10.0 if wait is None else wait
        try:
            await asyncio.wait_for(preview.settled.wait(), limit)
        except TimeoutError:
            pass
        return preview

    async def stop(self, session_id: str, reason: str = "requested") -> bool:
        """Stop the dev server (closing the session's WebSockets); True when one was running.

        The state turns ``stopped`` once the process group is gone; a start
        asked for meanwhile (a browser's reconnecting HMR client) begins then.
        """
        preview = self.previews.get(session_id)
        if preview is None:
            return False
        was_running = preview.state in RUNNING
        task, preview.task = preview.task, None
        preview.start_pending = False
        if task is None or task.done():
            if not preview.stopping:
                preview.set_state(PreviewState.STOPPED)
            return was_running
        preview.log.event(f"stopping: {reason}")
        preview.stopping = True
        task.add_done_callback(lambda _: self._stopped(preview))
        task.cancel()
        await asyncio.wait({task})
        return was_running

    async def forget(self, session_id: str, reason: str) -> bool:
        """Stop the dev server and drop the preview (no restart on demand from its old folder); True when one ran."""
        stopped = await self.stop(session_id, reason)
        preview = self.previews.pop(session_id, None)
        if preview is not None:
            preview.log.close()
        return stopped

    def _stopped(self, preview: Preview) -> None:
        preview.stopping = False
        preview.set_state(PreviewState.STOPPED)
        if preview.start_pending and not self._closing:
            preview.start_pending = False
            self.ensure(preview.session_id, preview.folder)

    async def restart(self, session_id: str, folder: Path, wait: float | None = None) -> Preview:
        await self.stop(session_id, "restart requested")
        return await self.start(session_id, folder, wait)

    async def provide(self, session_id: str) -> PreviewRoute | None:
        """The session table's provider: a request for a session without a ready route.

        Starts the preview when it is stopped (or failed a while ago) and the
        session names a thread folder; unknown sessions get None (404).
        """
        preview = self.previews.get(session_id)
        retry = preview is not None and preview.state is PreviewState.FAILED and (
            time.monotonic() - preview.changed_at > FAILED_RETRY_SECONDS
        )
        if preview is None or preview.state is PreviewState.STOPPED or preview.stopping or retry:
            folder = self.locator.folder(session_id) or (preview.folder if preview else None)
            if folder is None or not folder.is_dir():
                return None
            try:
                preview = self.ensure(session_id, folder)
            except PreviewError:
                return None
        preview.last_request = time.monotonic()
        return preview.route()

    def running(self) -> int:
        """How many dev servers run (starting or ready): what /health calls previewsRunning."""
        return sum(1 for preview in self.previews.values() if preview.process is not None and preview.process.returncode is None)

    def counts(self) -> dict[str, int]:
        """How many previews are in each state (for /health)."""
        counts = {state.value: 0 for state in PreviewState}
        for preview in self.previews.values():
            counts[preview.state.value] += 1
        return counts

    def status(self, session_id: str) -> dict:
        """A thread's preview as JSON (state, port, error, memory, log tail)."""
        preview = self.previews.get(session_id)
        if preview is None:
            return {"sessionId": session_id, "state": PreviewState.STOPPED.value, "url": f"/session/{session_id}/"}
        pids = group_members(preview.process.pid) if preview.process is not None else []
        return {
            "sessionId": session_id,
            "state": preview.state.value,
            "url": f"/session/{session_id}/",
            "port": preview.port,
            "pid": preview.process.pid if preview.process else None,
            "error": preview.error or None,
            "restarts": preview.restarts,
            "astroVersion": preview.astro_version or None,
            "nodeVersion": preview.node_version or None,
            "nodeBinary": preview.node_binary or None,
            "dependencies": preview.install or None,
            "packageManager": detect(preview.folder).label,
            "devCommand": preview.dev_command or None,
            "startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(preview.started_at)) if preview.started_at else None,
            "readySeconds": round(preview.ready_at - preview.start_clock, 2) if preview.ready_at >= preview.start_clock > 0 else None,
            "idleSeconds": round(time.monotonic() - self._last_used(preview), 1),
            "memoryBytes": rss_bytes(pids),
            "logTail": preview.log.tail(40 if preview.state is PreviewState.FAILED else 20),
        }

    # -- one preview's life ---------------------------------------------------------------

    async def _run(self, preview: Preview) -> None:
        try:
            await self._make_room(preview)
            def installing() -> None:
                preview.set_state(PreviewState.INSTALLING)

            node, version = await self.node_for(preview.folder, preview.log)
            ranges = [r for r in (site_engines(preview.folder), _astro_engines(preview.folder)) if r]
            preview.install = await self.deps.ensure(preview.folder, node, version, preview.log, installing)
            astro = astro_install(preview.folder)
            if astro.engines and astro.engines not in ranges and not fits(version, [astro.engines]):
                # Astro arrived with the install and needs another Node: its major may need its own install.
                node, version = await self.nodes.fitting([*ranges, astro.engines], preview.log)
                again = await self.deps.ensure(preview.folder, node, version, preview.log, installing)
                preview.install = preview.install if again == "present" else again
                astro = astro_install(preview.folder)
            preview.node_version = version
            preview.node_binary = node
            preview.astro_version = astro.version
            check_engines(astro, node, version)
            while True:
                code = await self._serve(preview, node, astro)
                if time.monotonic() - preview.ready_at > STABLE_SECONDS:
                    preview.restarts = 0
                if preview.restarts >= MAX_RESTARTS:
                    raise PreviewError(f"the dev server exited (code {code}) {MAX_RESTARTS + 1} times in a row; see the log")
                preview.restarts += 1
                delay = min(2.0 ** (preview.restarts - 1), 16.0)
                preview.set_state(PreviewState.CRASHED, f"exit code {code}; restart {preview.restarts} in {delay:g}s")
                preview.log.event(f"the dev server exited unexpectedly (code {code}); restarting in {delay:g}s")
                await asyncio.sleep(delay)
        except (PreviewError, NoFreePort) as exc:
            preview.log.event(f"failed: {exc}")
            preview.set_state(PreviewState.FAILED, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must show as a failed preview, never as one stuck in "starting"
            log.exception("preview %s", preview.session_id)
            preview.set_state(PreviewState.FAILED, f"internal error: {exc!r}")

    async def _serve(self, preview: Preview, node: str, astro: AstroInstall) -> int:
        """Run one dev server until it exits after having been ready; returns its exit code."""
        env = child_env(self.settings, node)
        for _ in range(PORT_ATTEMPTS):
            preview.port = self.ports.acquire()
            preview.set_state(PreviewState.STARTING)
            argv, how = await self._dev_command(preview, node, astro, preview.port)
            mark = preview.log.count
            preview.log.event(f"starting Astro {astro.version} (Node {preview.node_version}) on 127.0.0.1:{preview.port}: {how}")
            try:
                preview.process = await spawn(argv, cwd=preview.folder, env=env, log=preview.log)
                outcome = await self._wait_ready(preview, preview.process, preview.port, mark)
                if outcome == "ready":
                    preview.ready_at = time.monotonic()
                    preview.set_state(PreviewState.READY)
                    preview.log.event(f"ready in {preview.ready_at - preview.start_clock:.1f}s")
                    self.table.publish(PreviewRoute(preview.session_id, _target(preview.port), RouteState.READY, root=preview.folder))
                    return await preview.process.wait()
                if outcome != "port-taken":
                    raise PreviewError(outcome)
                preview.log.event(f"port {preview.port} was taken meanwhile; trying the next one")
            finally:
                await self._release(preview)
        raise PreviewError(f"no usable port after {PORT_ATTEMPTS} attempts")

    async def node_for(self, folder: Path, log_tail: LogTail) -> tuple[str, str]:
        """The Node the site asks for: its engines.node and, when Astro is installed already, Astro's minimum."""
        ranges = [r for r in (site_engines(folder), _astro_engines(folder)) if r]
        return await self.nodes.fitting(ranges, log_tail)

    async def _dev_command(self, preview: Preview, node: str, astro: AstroInstall, port: int) -> tuple[list[str], str]:
        """The site's own ``dev`` script through its package manager, else ``astro dev``; and how to say which."""
        address = ["--host", "127.0.0.1", "--port", str(port)]
        script = dev_script(preview.folder)
        if script is None or is_plain_astro_dev(script):
            argv = [node, str(astro.entry), "dev", *address]
            if astro.has_dev_lock:
                argv.append("--ignore-lock")  # a stale .astro/dev.json must never block a start
            preview.dev_command = "astro dev" + (" (the site's dev script)" if script else " (the site has no dev script)")
            return argv, preview.dev_command
        manager = detect(preview.folder)
        tool = await self.deps.tools.argv(manager, node, preview.log)
        preview.dev_command = f"the site's dev script through {manager.label}: {script}"
        return [*tool, *manager.run_args("dev", *address)], preview.dev_command

    async def _wait_ready(self, preview: Preview, proc: Child, port: int, mark: int) -> str:
        """``ready`` once GET / answers below 500; ``port-taken``; or why it never became ready."""
        assert self._client is not None
        timeout = self.settings.astro_start_timeout
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{port}/"
        last = "no answer"
        while True:
            if proc.returncode is not None:
                await proc.drained()
                return f"the dev server exited with code {proc.returncode} before it answered"
            if any(PORT_TAKEN in line for line in preview.log.since(mark, 400)):
                return "port-taken"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"the dev server did not answer GET / within {timeout:g}s ({last})"
            try:
                async with self._client.get(
                    url,
                    headers={"Accept": "text/html"},
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=remaining, connect=2.0),
                ) as response:
                    await response.read()
                    if response.status < 500:
                        return "ready"
                    last = f"GET / answered {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(POLL_INTERVAL)

    async def _release(self, preview: Preview) -> None:
        """Take the route away (closing WebSockets), stop the process group, free the port."""
        proc, preview.process = preview.process, None
        port, preview.port = preview.port, None
        try:
            await self.table.withdraw(preview.session_id)
        finally:
            try:
                if proc is not None:
                    await proc.stop()  # ends with SIGKILL to the whole group, whatever happens
            finally:
                self.ports.release(port)

    # -- idle and capacity -------------------------------------------------------------------

    def _last_used(self, preview: Preview) -> float:
        return max(self.table.last_activity(preview.session_id), preview.last_request, preview.ready_at)

    async def _make_room(self, preview: Preview) -> None:
        """Stop least recently used previews so at most MAX_PREVIEWS run (0: no limit)."""
        limit = self.settings.max_previews
        if limit <= 0:
            return
        others = [p for p in self.previews.values() if p is not preview and p.state in RUNNING and not p.stopping]
        while len(others) >= limit:
            victim = min(others, key=self._last_used)
            others.remove(victim)
            await self.stop(victim.session_id, f"MAX_PREVIEWS={limit} reached and this preview was used least recently")

    async def _reap_idle(self) -> None:
        idle = self.settings.preview_idle_minutes * 60.0
        period = min(30.0, max(0.2, idle / 4))
        while True:
            await asyncio.sleep(period)
            if idle <= 0:
                continue
            now = time.monotonic()
            for preview in list(self.previews.values()):
                if preview.state is PreviewState.READY and not preview.stopping and now - self._last_used(preview) >= idle:
                    try:
                        await self.stop(preview.session_id, f"idle for {self.settings.preview_idle_minutes:g} min")
                    except Exception:
                        log.exception("stopping idle preview %s", preview.session_id)
