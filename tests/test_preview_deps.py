"""Dependencies: one real `npm ci` per lockfile, shared by the threads of a repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from control.sessions import SessionRegistry
from core.ids import ThreadRef
from preview.deps import STORE_MARK, git_common_dir, store_key
from tests.fixtures_astro import EXAMPLE_SITE
from tests.support.polling import wait_until

pytestmark = pytest.mark.astro

GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "user.name=Test", "-c", "user.email=test@example.invalid"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def repository_with_threads(workspace: Path, *threads: str) -> dict[str, Path]:
    """A repository of the example site (without its .gitignore, so only the edge's exclude can
    hide node_modules) and one worktree per thread, laid out as control/ does."""
    repo = workspace / "c1" / "u1" / "repo"
    shutil.copytree(EXAMPLE_SITE, repo, ignore=shutil.ignore_patterns("node_modules", ".astro", "dist", ".gitignore"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "site")
    folders = {}
    for thread in threads:
        folder = workspace / "c1" / "u1" / "threads" / thread
        git(repo, "worktree", "add", "-q", "-b", f"thread-{thread}", str(folder))
        folders[thread] = folder
    return folders


async def test_threads_with_the_same_lockfile_share_one_install(preview_edge, settings):
    folders = repository_with_threads(settings.workspace_path, "t1", "t2")  # not registered by /api/init
    registry = SessionRegistry(settings.workspace_path)
    one, two = registry.session_id_of(ThreadRef("c1", "u1", "t1")), registry.session_id_of(ThreadRef("c1", "u1", "t2"))
    edge = await preview_edge()

    status, body = await edge.api("POST", "start", "c1/u1/t1", wait="0")
    assert status == 202 and body["state"] in ("starting", "installing")
    await edge.wait_state(one, {"installing", "ready", "failed"})
    first = await edge.wait_state(one, {"ready", "failed"}, timeout=300)
    assert first["state"] == "ready", first
    assert first["dependencies"] == "installed"
    assert edge.supervisor.deps.installs == 1
    assert any("npm ci" in line for line in edge.supervisor.get(one).log.tail(400))
    key = store_key(folders["t1"], first["nodeVersion"])
    store = settings.workspace_path / ".node_modules" / key
    await wait_until(lambda: any(p.name.startswith("spare-") and "." not in p.name for p in store.iterdir()), "a tree linked ahead", 60)

    status, second = await edge.api("POST", "start", "c1/u1/t2")
    assert status == 200, second
    assert second["dependencies"] == "linked"
    assert edge.supervisor.deps.installs == 1  # no second npm run
    assert any("linked ahead of time" in line for line in edge.supervisor.get(two).log.tail(400))
    store_file = settings.workspace_path / ".node_modules" / key / "node_modules" / "astro" / "package.json"
    inodes = {os.stat(p).st_ino for p in (store_file, *(f / "node_modules/astro/package.json" for f in folders.values()))}
    assert len(inodes) == 1  # the same file, hard-linked
    for folder in folders.values():
        assert (folder / "node_modules" / STORE_MARK).read_text().strip() == key
        assert not (folder / "node_modules").is_symlink()  # Vite serves only files inside the project

    # The worktrees stay clean: node_modules and .astro are excluded locally, no user file changed.
    exclude = git_common_dir(folders["t1"]) / "info" / "exclude"
    assert "/node_modules" in exclude.read_text().splitlines()
    for folder in folders.values():
        assert git(folder, "status", "--porcelain") == ""

    code, page, _ = await edge.get(f"/session/{two}/")
    assert code == 200 and "Welcome to Amelia" in page


async def test_a_missing_package_json_fails_clearly(preview_edge, settings):
    folder = settings.workspace_path / "c1" / "u1" / "threads" / "empty"
    folder.mkdir(parents=True)
    edge = await preview_edge()
    status, body = await edge.api("POST", "start", "c1/u1/empty")
    assert status == 500
    assert body["state"] == "failed"
    assert "package.json is missing" in body["error"]
    assert not (folder / "node_modules").exists()


def test_git_common_dir_of_a_worktree_is_the_main_repository(tmp_path):
    folders = repository_with_threads(tmp_path, "t9")
    assert git_common_dir(folders["t9"]) == (tmp_path / "c1" / "u1" / "repo" / ".git").resolve()
    assert git_common_dir(tmp_path) is None
