"""Fixtures for the preview supervisor: real threads in a real workspace, a real edge.

Threads are copies of examples/site (``astro_site``) placed where control/
keeps them, ``WORKSPACE_PATH/<client>/<user>/threads/<thread>``, and entered
in control's session registry as ``/api/init`` would, so their previews have
the real session ids (``SessionRegistry.session_id_of``) and open from a bare URL.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from control.sessions import SessionRegistry, ThreadSession
from core.ids import ThreadRef, thread_branch
from edge.settings import Settings
from preview.procs import group_members
from tests.conftest import RunningServer, free_port
from tests.fixtures_astro import ROOT, AstroSite
from tests.support.polling import wait_until

NPM_CACHE = ROOT / ".cache" / "npm"  # kept between runs, so `npm ci` in tests is quick
STATE_TIMEOUT = 120.0


@dataclass
class Thread:
    """A conversation thread's worktree holding a copy of the example site."""

    client_id: str
    user_id: str
    thread_id: str
    site: AstroSite
    workspace: Path

    @property
    def path(self) -> Path:
        return self.site.path

    @property
    def ids(self) -> str:
        return f"{self.client_id}/{self.user_id}/{self.thread_id}"

    @property
    def session_id(self) -> str:
        """The session that previews this thread (``/session/<id>/``)."""
        return SessionRegistry(self.workspace).session_id_of(ThreadRef(self.client_id, self.user_id, self.thread_id))


ThreadFactory = Callable[..., Thread]


@pytest.fixture
def make_thread(astro_site, settings: Settings, tmp_path: Path) -> ThreadFactory:
    """``make_thread("t1", version="5")``: a registered thread folder with node_modules, in the workspace.

    Make threads before starting the edge: it reads the registry when it starts.
    """

    def make(thread_id: str, version: str = "5", client_id: str = "c1", user_id: str = "u1") -> Thread:
        relative = settings.workspace_path.relative_to(tmp_path) / client_id / user_id / "threads" / thread_id
        thread = Thread(client_id, user_id, thread_id, astro_site(version, str(relative)), settings.workspace_path)
        now = time.time()
        entry = ThreadSession(
            session_id=thread.session_id,
            thread=ThreadRef(client_id, user_id, thread_id),
            branch=thread_branch(thread_id),
            repo_url="",  # a copy of examples/site, not a clone
            worktree=str(thread.path.absolute()),
            created=now,
            updated=now,
        )
        SessionRegistry(settings.workspace_path).put(entry)
        return thread

    return make


def preview_overrides(**overrides) -> dict:
    """Settings for an edge with previews: free port pool, the machine's PATH and CA, a warm npm cache."""
    return {
        "astro_port": free_port(),
        "child_env": Settings.from_env().child_env,
        "npm_cache_dir": NPM_CACHE,
        "astro_start_timeout": 90.0,
        **overrides,
    }


class PreviewEdge:
    """A running edge with previews, and a client for its API."""

    def __init__(self, server: RunningServer, client: aiohttp.ClientSession) -> None:
        self.server = server
        self.client = client

    @property
    def supervisor(self):
        from preview import PREVIEWS

        return self.server.app[PREVIEWS]

    def url(self, path: str) -> str:
        return self.server.url(path)

    async def api(self, method: str, action: str, thread: Thread | str, **params: str) -> tuple[int, dict]:
        ids = thread.ids if isinstance(thread, Thread) else thread
        async with self.client.request(method, self.url(f"/api/astro/{action}/{ids}"), params=params) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str, **headers: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
        async with self.client.get(self.url(path), headers=headers, allow_redirects=False) as resp:
            return resp.status, await resp.text(), resp.headers

    async def wait_state(self, session_id: str, states: set[str], timeout: float = STATE_TIMEOUT) -> dict:
        """Wait until the preview is in one of ``states``; fail with its status otherwise."""
        status: dict = {}

        def reached() -> dict | None:
            nonlocal status
            status = self.supervisor.status(session_id)
            return status if status["state"] in states else None

        return await wait_until(reached, f"preview {session_id} in {states}", timeout, interval=0.1, detail=lambda: status)


PreviewEdgeFactory = Callable[..., Awaitable[PreviewEdge]]


@pytest.fixture
async def preview_edge(edge) -> AsyncIterator[PreviewEdgeFactory]:
    """``await preview_edge(**settings_overrides)``: a real edge whose previews run real Astro."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:

        async def start(**overrides) -> PreviewEdge:
            server = await edge(**preview_overrides(**overrides))
            return PreviewEdge(server, client)

        yield start


def group_gone(pgid: int) -> bool:
    """True when no live process is left in the process group."""
    return not group_members(pgid)


def with_settings(settings: Settings, **overrides) -> Settings:
    return replace(settings, **preview_overrides(**overrides))


def processes_in(folder: Path) -> list[int]:
    """Live processes whose working directory is ``folder`` (a dev server left behind would be one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) == folder.resolve():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
