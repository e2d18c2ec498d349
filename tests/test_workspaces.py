"""Workspaces: one clone per user, one worktree and branch per thread, refused inputs touch nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from control.repourl import RepoUrlError, parse_repo_url, pull_request_url
from control.sessions import REGISTRY, SECRET_FILE, SessionRegistry, ThreadSession, session_id_for
from control.workspaces import WORKSPACES
from core.errors import Invalid
from core.ids import ThreadRef, is_session_id
from tests.fixtures_git import git
from tests.support.polling import wait_until

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def files_under(root: Path) -> list[Path]:
    """What a request left in the workspace (the edge's session key, made on first use, is not the request's)."""
    found = sorted(p for p in root.rglob("*")) if root.exists() else []
    return [p for p in found if p not in (root / SECRET_FILE, root / SECRET_FILE.parent)]


async def test_init_clones_once_and_gives_each_thread_its_worktree(git_edge, remote, settings, git_home):
    api = await git_edge()
    first = await api.init(t="t1", repo_url=remote.url)
    assert first.status == 200, first.text
    user = settings.workspace_path / "c1" / "u1"
    worktree = user / "threads" / "t1"
    assert first.body["success"] is True
    assert first.body["branch"] == "thread-t1"
    assert first.body["resumed"] is False and first.body["cloned"] is True
    assert first.body["workspacePath"] == str(worktree)
    assert (first.body["clientId"], first.body["userId"], first.body["threadId"]) == ("c1", "u1", "t1")
    session_id = first.body["sessionId"]
    assert first.body["previewUrl"] == f"{api.origin}/session/{session_id}/"

    project = user / "project"
    assert git(["config", "--get", "remote.origin.partialclonefilter"], project, git_home).strip() == "blob:none"
    assert git(["symbolic-ref", "--short", "HEAD"], worktree, git_home).strip() == "thread-t1"
    assert (worktree / "README.md").read_text() == "# Site\n"
    assert not (worktree / "DEVELOP.md").exists()  # based on the remote's HEAD (main)

    second = await api.init(t="t2")  # repoUrl may be left out once the user has a clone
    assert second.status == 200, second.text
    assert second.body["cloned"] is False and second.body["resumed"] is False
    assert git(["symbolic-ref", "--short", "HEAD"], user / "threads" / "t2", git_home).strip() == "thread-t2"
    assert second.body["sessionId"] != session_id

    context = json.loads((user / ".claude" / "threads" / "t1.json").read_text())
    assert context["branch"] == "thread-t1" and context["sessionId"] == session_id and context["status"] == "ready"
    metadata = json.loads((user / "metadata.json").read_text())
    assert metadata["repoUrl"] == remote.url and metadata["defaultBranch"] == "main"

    # The public Python API: worktree from (c, u, t), and the registry, also as reloaded from disk.
    assert api.app[WORKSPACES].thread_path(ThreadRef("c1", "u1", "t1")) == worktree
    entry = api.app[REGISTRY].get(session_id)
    assert entry is not None and (entry.thread_id, entry.worktree) == ("t1", str(worktree))
    reloaded = SessionRegistry(settings.workspace_path).get(session_id)
    assert reloaded == entry


async def test_init_is_idempotent_and_keeps_work(git_edge, remote, settings):
    api = await git_edge()
    first = await api.init(repo_url=remote.url)
    worktree = Path(first.body["workspacePath"])
    (worktree / "draft.txt").write_text("unsaved work")
    inode = (settings.workspace_path / "c1" / "u1" / "project").stat().st_ino
    again = await api.init(repo_url=remote.url + "/")  # the same repository, spelled differently
    assert again.status == 200, again.text
    assert again.body["sessionId"] == first.body["sessionId"]
    assert again.body["resumed"] is True and again.body["cloned"] is False
    assert (worktree / "draft.txt").read_text() == "unsaved work"
    assert (settings.workspace_path / "c1" / "u1" / "project").stat().st_ino == inode


async def test_a_thread_branch_on_the_remote_is_resumed(git_edge, remote):
    remote.commit("thread-t9", {"page.txt": "written elsewhere\n"})
    api = await git_edge()
    answer = await api.init(t="t9", repo_url=remote.url)
    assert answer.status == 200, answer.text
    assert answer.body["resumed"] is True
    assert (Path(answer.body["workspacePath"]) / "page.txt").read_text() == "written elsewhere\n"


async def test_a_new_thread_branch_on_the_remote_is_found_by_an_existing_clone(git_edge, remote):
    api = await git_edge()
    assert (await api.init(t="t1", repo_url=remote.url)).status == 200
    remote.commit("thread-late", {"late.txt": "pushed after the clone\n"})
    answer = await api.init(t="late")
    assert answer.status == 200, answer.text
    assert answer.body["resumed"] is True
    assert (Path(answer.body["workspacePath"]) / "late.txt").exists()


async def test_a_local_branch_is_resumed_after_its_worktree_folder_was_lost(git_edge, remote):
    api = await git_edge()
    first = await api.init(repo_url=remote.url)
    worktree = Path(first.body["workspacePath"])
    (worktree / "kept.txt").write_text("committed\n")
    assert (await api.git("commit", body={"message": "keep"})).body["committed"] is True
    subprocess.run(["rm", "-rf", str(worktree)], check=True)
    again = await api.init()
    assert again.status == 200, again.text
    assert again.body["resumed"] is True
    assert (worktree / "kept.txt").read_text() == "committed\n"


async def test_git_default_branch_setting_is_the_base_of_new_threads(git_edge, remote):
    api = await git_edge(git_default_branch="develop")
    answer = await api.init(repo_url=remote.url)
    assert answer.status == 200, answer.text
    assert (Path(answer.body["workspacePath"]) / "DEVELOP.md").exists()


async def test_concurrent_inits_of_one_user_clone_once(git_edge, remote, settings):
    api = await git_edge()
    answers = await asyncio.gather(*(api.init(t=f"t{i}", repo_url=remote.url) for i in range(4)))
    assert [a.status for a in answers] == [200] * 4, [a.text for a in answers]
    assert sum(a.body["cloned"] for a in answers) == 1
    user = settings.workspace_path / "c1" / "u1"
    assert sorted(p.name for p in (user / "threads").iterdir()) == ["t0", "t1", "t2", "t3"]
    assert sorted(p.name for p in user.iterdir()) == [".claude", "metadata.json", "project", "threads"]


async def test_another_repository_for_the_same_user_is_refused(git_edge, remote, tmp_path, git_home):
    from tests.fixtures_git import make_remote

    other_root = tmp_path / "other"
    other_root.mkdir()
    other = make_remote(other_root, git_home, "other.git")
    api = await git_edge()
    assert (await api.init(t="t1", repo_url=remote.url)).status == 200
    answer = await api.init(t="t2", repo_url=other.url)
    assert answer.status == 409
    assert answer.body["success"] is False and "clone of" in answer.body["error"]


async def test_first_init_without_repo_url_is_refused_and_creates_nothing(git_edge, settings):
    api = await git_edge()
    answer = await api.init()
    assert answer.status == 400
    assert answer.body == {"success": False, "error": "repoUrl is required: this user has no clone yet"}
    assert files_under(settings.workspace_path) == []


BAD_IDS = [
    {"threadId": "../../etc"},
    {"threadId": ".."},
    {"threadId": ".hidden"},
    {"threadId": "-rf"},
    {"threadId": "a/b"},
    {"threadId": "a b"},
    {"threadId": "x" * 65},
    {"threadId": "x.lock"},
    {"threadId": "x."},
    {"threadId": ""},
    {"threadId": 7},
    {"threadId": None},
    {"clientId": "../x"},
    {"clientId": ["c"]},
    {"userId": "u/../../x"},
    {"userId": "..."},
    {"clientId": "acme\n"},  # "$" in a regular expression matches before a final newline
]


@pytest.mark.parametrize("fields", BAD_IDS, ids=lambda f: repr(f)[:40])
async def test_bad_ids_are_refused_before_anything_is_created(git_edge, remote, settings, fields):
    api = await git_edge()
    body = {"clientId": "c1", "userId": "u1", "threadId": "t1", "repoUrl": remote.url, **fields}
    answer = await api.call("POST", "/api/init", body)
    assert answer.status == 400, answer.text
    assert answer.body["success"] is False and answer.body["error"]
    assert files_under(settings.workspace_path) == []
    assert not Path("/etc/threads").exists()


@pytest.mark.parametrize("path_ids", [".x/u1/t1", "c1/-u/t1", "c1/u1/a..b", "c1/u1/t1.lock"])
async def test_bad_ids_in_paths_are_refused(git_edge, settings, path_ids):
    api = await git_edge()
    for path in (f"/api/git/status/{path_ids}", f"/api/git/{path_ids}", f"/api/init/{path_ids}"):
        answer = await api.call("GET", path)
        assert answer.status == 400, (path, answer.text)
    answer = await api.call("POST", f"/api/git/commit/{path_ids}", {"message": "x"})
    assert answer.status == 400
    assert files_under(settings.workspace_path) == []


def pwned_path() -> Path:
    return Path("/tmp") / f"pwned_{secrets.token_hex(6)}"


async def test_ext_transport_is_refused_and_runs_nothing(git_edge, settings, git_home, tmp_path):
    canary = pwned_path()
    url = f"ext::sh -c touch% {canary}"
    # The canary works: the same URL does run a command when git is told to allow ext::.
    proof = pwned_path()
    subprocess.run(
        ["git", "-c", "protocol.ext.allow=always", "clone", f"ext::sh -c touch% {proof}", str(tmp_path / "x")],
        env={"PATH": os.environ["PATH"], "HOME": str(git_home)},
        capture_output=True,
    )
    assert proof.exists()
    proof.unlink()

    api = await git_edge()  # GIT_ALLOW_LOCAL=1 makes no difference
    answer = await api.init(repo_url=url)
    assert answer.status == 400, answer.text
    assert "not accepted" in answer.body["error"]
    assert not canary.exists()
    assert files_under(settings.workspace_path) == []


BAD_URLS = [
    "fd::17",
    "ext::sh -c id",
    "EXT::sh",
    "--upload-pack=touch /tmp/pwned_upload",
    "-u",
    "http://github.com/owner/repo.git",
    "https://evil.example.com/owner/repo.git",
    "https://user:secret@github.com/owner/repo.git",
    "https://github.com@evil.example.com/owner/repo.git",
    "https://github.com/owner/repo.git?upload-pack=x",
    "https://github.com/../../etc/passwd",
    "https://github.com/",
    "ssh://git@evil.example.com/owner/repo.git",
    "git@evil.example.com:owner/repo.git",
    "git://github.com/owner/repo.git",
    "ftp://github.com/owner/repo.git",
    "relative/path",
    "file:///etc/../tmp",
    "https://github.com/owner/repo.git\n--upload-pack=x",
    "",
    5,
    ["https://github.com/owner/repo.git"],
]


@pytest.mark.parametrize("url", BAD_URLS, ids=lambda u: repr(u)[:40])
async def test_bad_repo_urls_are_refused(git_edge, settings, url):
    api = await git_edge()
    answer = (
        await api.init(repo_url=url)
        if url != ""
        else await api.call("POST", "/api/init", {"clientId": "c1", "userId": "u1", "threadId": "t1", "repoUrl": ""})
    )
    assert answer.status == 400, answer.text
    assert answer.body["success"] is False
    assert files_under(settings.workspace_path) == []
    assert not Path("/tmp/pwned_upload").exists()


async def test_local_repositories_need_git_allow_local(git_edge, remote, settings):
    api = await git_edge(git_allow_local=False)
    for url in (remote.url, str(remote.bare)):
        answer = await api.init(repo_url=url)
        assert answer.status == 400
        assert "GIT_ALLOW_LOCAL" in answer.body["error"]
    assert files_under(settings.workspace_path) == []


async def test_bodies_must_be_json_objects_of_the_right_size(git_edge, settings):
    api = await git_edge()
    assert (await api.call("POST", "/api/init", data="{not json")).status == 400
    assert (await api.call("POST", "/api/init", data="[1, 2]")).status == 400
    huge = json.dumps({"threadId": "t1", "pad": "x" * (300 * 1024)})
    answer = await api.call("POST", "/api/init", data=huge)
    assert answer.status == 413
    assert answer.body["success"] is False
    assert files_under(settings.workspace_path) == []


def test_repo_url_policy_normalises_to_https():
    hosts = ("github.com",)
    assert parse_repo_url("git@github.com:owner/repo.git", hosts, False).url == "https://github.com/owner/repo.git"
    assert (
        parse_repo_url("ssh://git@github.com/owner/repo.git", hosts, False).url == "https://github.com/owner/repo.git"
    )
    assert parse_repo_url("https://GitHub.com/owner/repo", hosts, False).url == "https://github.com/owner/repo"
    assert (
        parse_repo_url("https://127.0.0.1:8443/site.git", ("127.0.0.1",), False).url
        == "https://127.0.0.1:8443/site.git"
    )
    assert parse_repo_url("/srv/site.git", hosts, True).url == "file:///srv/site.git"
    with pytest.raises(RepoUrlError):
        parse_repo_url("/srv/site.git", hosts, False)
    assert isinstance(RepoUrlError("x"), Invalid)


def test_pull_request_urls_for_github_only():
    assert (
        pull_request_url("https://github.com/acme/site.git", "thread-abc")
        == "https://github.com/acme/site/pull/new/thread-abc"
    )
    assert pull_request_url("https://gitlab.com/acme/site.git", "thread-abc") is None
    assert pull_request_url("file:///srv/site.git", "thread-abc") is None


@pytest.mark.parametrize("thread_id", ["t1", "Thread_ABC.def", "___", "a" * 64, "x-y--z", "0", "19a2f3c4-5678"])
def test_session_ids_are_dns_labels_and_deterministic(thread_id):
    key = b"k" * 32
    session_id = session_id_for(ThreadRef("c1", "u1", thread_id), key)
    assert DNS_LABEL.match(session_id) and "--" not in session_id and len(session_id) <= 63
    assert is_session_id(session_id)
    assert session_id == session_id_for(ThreadRef("c1", "u1", thread_id), key)
    assert session_id != session_id_for(ThreadRef("c1", "u2", thread_id), key)
    assert session_id != session_id_for(ThreadRef("c2", "u1", thread_id), key)
    assert session_id != session_id_for(ThreadRef("c1", "u1", thread_id), b"another key")  # not computable without the key


def test_the_session_key_is_made_once_per_workspace_and_kept_private(tmp_path):
    first = SessionRegistry(tmp_path)
    assert len(first.key) == 64 and (tmp_path / SECRET_FILE).stat().st_mode & 0o077 == 0
    assert SessionRegistry(tmp_path).key == first.key  # the same ids after a restart
    assert SessionRegistry(tmp_path, "configured").key == b"configured"
    t1 = ThreadRef("c1", "u1", "t1")
    assert SessionRegistry(tmp_path / "other").session_id_of(t1) != first.session_id_of(t1)


def test_registry_is_persisted_atomically(tmp_path):
    registry = SessionRegistry(tmp_path)
    entry = ThreadSession("t1-abc", ThreadRef("c1", "u1", "t1"), "thread-t1", "https://github.com/a/b.git", "/w/t1", 1.0, 1.0)
    registry.put(entry)
    registry.put(
        ThreadSession("t1-abc", ThreadRef("c1", "u1", "t1"), "thread-t1", "https://github.com/a/b.git", "/w/t1", 5.0, 5.0)
    )
    registry.update("t1-abc", branch="feature")
    files = sorted(p.name for p in (tmp_path / ".edge").iterdir())
    assert files == ["sessions.json"]  # no temporary file left behind
    again = SessionRegistry(tmp_path).get("t1-abc")
    assert again is not None and again.created == 1.0 and again.branch == "feature"
    data = json.loads((tmp_path / ".edge" / "sessions.json").read_text())
    assert data["version"] == 1 and data["sessions"]["t1-abc"]["threadId"] == "t1"


def test_a_damaged_registry_entry_is_skipped(tmp_path):
    (tmp_path / ".edge").mkdir()
    (tmp_path / ".edge" / "sessions.json").write_text(json.dumps({"version": 1, "sessions": {"bad": {"x": 1}}}))
    assert SessionRegistry(tmp_path).all() == []


async def test_an_unfinished_clone_is_removed_and_cloning_starts_over(git_edge, remote, settings, git_home):
    user = settings.workspace_path / "c1" / "u1"
    half = user / ".project.tmp-deadbeef"
    half.mkdir(parents=True)
    git(["init", "-q", str(half)], user, git_home)  # what a clone killed halfway leaves
    api = await git_edge()
    answer = await api.init(repo_url=remote.url)
    assert answer.status == 200, answer.text
    assert not half.exists()
    assert (user / "threads" / "t1" / "README.md").exists()


async def test_an_unfinished_worktree_is_removed_and_created_again(git_edge, remote, settings, git_home):
    api = await git_edge()
    assert (await api.init(t="t1", repo_url=remote.url)).status == 200
    project = settings.workspace_path / "c1" / "u1" / "project"
    half = settings.workspace_path / "c1" / "u1" / "threads" / "t2"
    # What a `git worktree add` killed before its checkout leaves: an admin folder locked "initializing".
    git(["worktree", "add", "--no-checkout", "-b", "thread-t2", str(half), "origin/main"], project, git_home)
    admin = project / ".git" / "worktrees" / "t2"
    (admin / "locked").write_text("initializing")
    assert not (half / "README.md").exists()
    answer = await api.init(t="t2")
    assert answer.status == 200, answer.text
    assert answer.body["resumed"] is True  # the branch had been created
    assert (half / "README.md").read_text() == "# Site\n"
    assert not (project / ".git" / "worktrees" / "t2" / "locked").exists()


def test_thread_path_checks_ids(settings):
    from control.workspaces import Workspaces

    ws = Workspaces(settings, SessionRegistry(settings.workspace_path))
    assert ws.thread_path(ThreadRef("c", "u", "t")) == settings.workspace_path.absolute() / "c" / "u" / "threads" / "t"
    for bad in ("..", "../x", "/abs", "-x"):
        with pytest.raises(Invalid):
            ws.thread_path(ThreadRef("c", "u", bad))


async def test_an_init_goes_on_when_the_caller_disconnects(git_edge, git_http, settings):
    git_http.hold_upload_pack = asyncio.Event()
    api = await git_edge(
        git_allow_local=False,
        git_allowed_hosts=("127.0.0.1",),
        github_token=git_http.token,
        git_ssl_ca_info=git_http.ca_file,
    )
    caller = asyncio.create_task(api.init(repo_url=git_http.url()))
    await asyncio.wait_for(git_http.upload_pack_waiting.wait(), 30)
    caller.cancel()  # Hermes gives up: the connection closes
    with pytest.raises(asyncio.CancelledError):
        await caller
    git_http.hold_upload_pack.set()

    async def ready() -> bool:
        status = (await api.call("GET", "/api/init/c1/u1/t1")).body.get("status")
        assert status in ("ready", "waiting", "initializing", "cloning", "creating"), status
        return status == "ready"

    await wait_until(ready, "the init to finish", 60)
    assert (settings.workspace_path / "c1" / "u1" / "threads" / "t1" / "README.md").exists()


async def test_clone_progress_lines_reach_the_callback(settings, git_home, remote, tmp_path):
    from control.gitcmd import GitRunner
    from tests.fixtures_git import git_settings

    runner = GitRunner(git_settings(settings, git_home, git_allow_local=True))
    lines: list[str] = []
    await runner.run(
        ["clone", "--progress", "--no-checkout", "--", remote.url, str(tmp_path / "c")],
        cwd=tmp_path,
        progress=lines.append,
    )
    assert any(line.startswith("Receiving objects:") for line in lines)
