"""End to end: a thread made by ``POST /api/init`` is previewed at the ``previewUrl`` it answers.

The remote is a bare repository of examples/site (GIT_ALLOW_LOCAL=1). Its
lockfile's install is put into the edge's dependency store from the Astro 5
cache beforehand, so a new worktree gets node_modules by hard links, as the
second thread of a repository does in production, and no npm runs.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import pytest
from yarl import URL

from control.previews import RegistryLocator
from control.sessions import REGISTRY, SessionRegistry, ThreadSession, session_id_for
from edge.server import start_edge
from edge.settings import Settings
from preview import ThreadRef, thread_folder
from preview.deps import store_key
from preview.node import node_version
from tests.chromium import PUBLIC_HOST
from tests.fixtures_astro import CACHE, EXAMPLE_SITE, _link_node_modules, node_for, require
from tests.fixtures_git import git, git_settings
from tests.fixtures_preview import PreviewEdge, group_gone, preview_overrides, processes_in
from tests.support.polling import wait_until

SERVE_TIMEOUT = 120.0


@pytest.fixture
def site_repo(tmp_path: Path, git_home: Path) -> str:
    """A bare repository whose ``main`` holds examples/site (without node_modules); its URL."""
    root = tmp_path / "remotes"
    root.mkdir()
    bare = root / "site.git"
    git(["init", "-q", "--bare", "-b", "main", str(bare)], root, git_home)
    git(["config", "uploadpack.allowFilter", "true"], bare, git_home)  # the edge clones blob-less
    work = root / "site.work"
    shutil.copytree(EXAMPLE_SITE, work, ignore=shutil.ignore_patterns("node_modules", ".astro", "dist"))
    git(["init", "-q", "-b", "main"], work, git_home)
    git(["add", "--all"], work, git_home)
    git(["commit", "-q", "-m", "the example site"], work, git_home)
    git(["push", "-q", str(bare), "main"], work, git_home)
    return f"file://{bare}"


@pytest.fixture
async def edge_overrides(settings: Settings, git_home: Path) -> dict:
    """Settings for an edge that clones local remotes and previews with Node 20 and a seeded store."""
    node = node_for("5")
    cache = CACHE / "astro" / "5" / "node_modules"
    require(node is not None and (cache / "astro" / "package.json").is_file(), "Astro 5 is not installed in .cache")
    assert node is not None
    store = settings.workspace_path / ".node_modules" / store_key(EXAMPLE_SITE, await node_version(node))
    store.mkdir(parents=True)
    _link_node_modules(cache, store)
    return preview_overrides(git_allow_local=True, child_env=git_settings(settings, git_home).child_env, node_binary=node)


@pytest.fixture
def init_edge(preview_edge, edge_overrides: dict) -> Callable[[], Awaitable[PreviewEdge]]:
    """``await init_edge()``: a real edge on the test's workspace, for /api/init and previews."""

    async def start() -> PreviewEdge:
        return await preview_edge(**edge_overrides)

    return start


async def init(client: aiohttp.ClientSession, origin: str, client_id: str, thread_id: str, repo_url: str) -> dict:
    """``POST /api/init`` as Hermes sends it to the public host; the successful answer."""
    body = {"clientId": client_id, "userId": "u1", "threadId": thread_id, "repoUrl": repo_url}
    async with client.post(f"{origin}/api/init", json=body, headers={"Host": PUBLIC_HOST}) as resp:
        answer = await resp.json()
    assert resp.status == 200 and answer["success"] is True, answer
    return answer


def preview_path(answer: dict) -> str:
    """The path of /api/init's previewUrl, after checking it names the public host and the session."""
    url = URL(answer["previewUrl"])
    assert url.host == PUBLIC_HOST
    assert url.path == f"/session/{answer['sessionId']}/"
    return url.path


async def served(edge: PreviewEdge, path: str) -> tuple[str, dict]:
    """GET ``path`` through the public host until the preview serves it (503 meanwhile)."""

    async def answer() -> tuple[str, dict] | None:
        code, page, headers = await edge.get(path, Host=PUBLIC_HOST, Accept="text/html")
        assert code in (200, 503), (code, page)
        return (page, dict(headers)) if code == 200 else None

    return await wait_until(answer, f"{path} to be served", SERVE_TIMEOUT, interval=0.25)


@pytest.mark.astro
async def test_initialised_threads_are_previewed_at_their_preview_urls(init_edge, site_repo, git_home):
    edge = await init_edge()
    first = await init(edge.client, edge.server.origin, "c1", "t1", site_repo)
    second = await init(edge.client, edge.server.origin, "c2", "t1", site_repo)  # same threadId, other client
    registry = edge.server.app[REGISTRY]
    assert first["sessionId"] == registry.session_id_of(ThreadRef("c1", "u1", "t1"))
    assert second["sessionId"] == registry.session_id_of(ThreadRef("c2", "u1", "t1")) != first["sessionId"]
    path_one, path_two = preview_path(first), preview_path(second)
    worktree_one, worktree_two = Path(first["workspacePath"]), Path(second["workspacePath"])
    index_two = worktree_two / "src" / "pages" / "index.astro"
    index_two.write_text(index_two.read_text().replace("Welcome to Amelia's site", "Client two's heading"))

    code, page, _ = await edge.get(path_one, Host=PUBLIC_HOST, Accept="text/html")
    assert code == 503 and "Starting preview" in page
    page_one, headers_one = await served(edge, path_one)
    page_two, headers_two = await served(edge, path_two)
    assert "Welcome to Amelia" in page_one and "Client two" not in page_one
    assert "Client two&#39;s heading" in page_two or "Client two's heading" in page_two
    assert "Welcome to Amelia" not in page_two
    assert (headers_one["X-Edge-Session"], headers_two["X-Edge-Session"]) == (first["sessionId"], second["sessionId"])

    # /api/astro/... for (client, user, thread) speaks of the same sessions and worktrees.
    _, one = await edge.api("GET", "status", "c1/u1/t1")
    _, two = await edge.api("GET", "status", "c2/u1/t1")
    assert (one["sessionId"], one["state"]) == (first["sessionId"], "ready")
    assert (two["sessionId"], two["state"]) == (second["sessionId"], "ready")
    assert one["pid"] in processes_in(worktree_one) and two["pid"] in processes_in(worktree_two)
    assert one["port"] != two["port"]
    assert one["dependencies"] == "linked" and edge.supervisor.deps.installs == 0  # no npm run

    status, stopped = await edge.api("POST", "stop", "c1/u1/t1")
    assert status == 200 and stopped["sessionId"] == first["sessionId"] and stopped["wasRunning"] is True
    assert group_gone(one["pid"])
    assert edge.supervisor.status(first["sessionId"])["state"] == "stopped"
    assert edge.supervisor.status(second["sessionId"])["state"] == "ready" and not group_gone(two["pid"])
    code, page, _ = await edge.get(path_two, Host=PUBLIC_HOST)
    assert code == 200 and "Client two" in page

    # Previewing leaves nothing in the worktree that a commit would pick up.
    assert git(["status", "--porcelain"], worktree_one, git_home) == ""


@pytest.mark.astro
async def test_an_edge_started_later_previews_a_thread_initialised_before(
    init_edge, site_repo, settings, edge_overrides
):
    running = await start_edge(replace(settings, port=0, **edge_overrides))
    try:
        async with aiohttp.ClientSession() as client:
            answer = await init(client, f"http://127.0.0.1:{running.port}", "c1", "t1", site_repo)
    finally:
        await running.runner.cleanup()

    edge = await init_edge()  # the registry comes back from WORKSPACE_PATH/.edge/sessions.json
    code, page, _ = await edge.get(preview_path(answer), Host=PUBLIC_HOST, Accept="text/html")
    assert code == 503 and "Starting preview" in page  # an unknown session would be 404
    assert edge.supervisor.get(answer["sessionId"]).folder == Path(answer["workspacePath"])


async def test_an_unregistered_thread_folder_is_previewed_once_the_api_names_it(preview_edge, settings):
    folder = settings.workspace_path / "c1" / "u1" / "threads" / "t1"
    folder.mkdir(parents=True)  # laid out as control/ does, but never seen by /api/init
    session = SessionRegistry(settings.workspace_path).session_id_of(ThreadRef("c1", "u1", "t1"))
    edge = await preview_edge()
    assert session == edge.server.app[REGISTRY].session_id_of(ThreadRef("c1", "u1", "t1"))

    code, _, _ = await edge.get(f"/session/{session}/", Accept="application/json")
    assert code == 404  # a bare URL alone never finds folders

    status, body = await edge.api("GET", "status", "c1/u1/t1")
    assert status == 200 and body["sessionId"] == session
    code, _, _ = await edge.get(f"/session/{session}/", Accept="application/json")
    assert code == 503  # found now: its preview starts (and fails: the folder is no npm project)
    failed = await edge.wait_state(session, {"failed"})
    assert "package.json is missing" in failed["error"]
    assert edge.server.app[REGISTRY].get(session) is None  # remembered, not registered
    assert SessionRegistry(settings.workspace_path).all() == []


def test_the_registry_locator_uses_registered_worktrees_and_remembers_only_real_folders(tmp_path):
    workspace = tmp_path / "workspace"
    registry = SessionRegistry(workspace)
    locator = RegistryLocator(registry, workspace)
    thread = ThreadRef("c1", "u1", "t1")
    thread_folder(workspace, thread).mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    session = session_id_for(ThreadRef("c1", "u1", "t1"), registry.key)
    registry.put(ThreadSession(session, ThreadRef("c1", "u1", "t1"), "thread-t1", "file:///site.git", str(elsewhere), 0.0, 0.0))

    assert locator.session_id(thread) == session
    assert locator.folder(session) == elsewhere  # the registry's entry, not the layout's guess
    missing = ThreadRef("c1", "u1", "missing")
    assert locator.folder(locator.session_id(missing)) is None  # naming ids alone remembers nothing
    assert locator.folder("../../etc") is None
