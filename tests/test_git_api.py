"""The git endpoints on real repositories: status, commit, push, pull, fetch, branch; nothing lost."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from control.gitops import CommitResult, PushResult
from control.workspaces import WORKSPACES
from core.ids import ThreadRef
from tests.fixtures_git import git


async def started(git_edge, remote, **overrides):
    api = await git_edge(**overrides)
    answer = await api.init(repo_url=remote.url)
    assert answer.status == 200, answer.text
    return api, Path(answer.body["workspacePath"])


def head(worktree: Path, home: Path) -> str:
    return git(["rev-parse", "HEAD"], worktree, home).strip()


async def test_status_lists_changes_by_kind(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    clean = await api.git("status")
    assert clean.status == 200, clean.text
    assert clean.body["clean"] is True and clean.body["branch"] == "thread-t1"
    assert (clean.body["ahead"], clean.body["behind"], clean.body["canPush"]) == (0, 0, False)
    assert (clean.body["upstream"], clean.body["comparedTo"]) == (None, "origin/main")

    (worktree / "README.md").write_text("# Changed\n")
    (worktree / "src" / "index.astro").unlink()
    (worktree / "staged.txt").write_text("new and staged\n")
    git(["add", "staged.txt"], worktree, git_home)
    (worktree / "new dir").mkdir()
    (worktree / "new dir" / "untracked file.txt").write_text("new\n")
    answer = await api.call("GET", "/api/git/c1/u1/t1")  # the old short path answers the same
    assert answer.status == 200
    changes = answer.body["changes"]
    assert changes["modified"] == ["README.md"]
    assert changes["deleted"] == ["src/index.astro"]
    assert changes["added"] == ["staged.txt"]
    assert changes["untracked"] == ["new dir/untracked file.txt"]
    assert answer.body["clean"] is False

    assert (await api.git("commit", body={"message": "edit"})).body["committed"] is True
    after = await api.git("status")
    assert after.body["clean"] is True and after.body["ahead"] == 1 and after.body["canPush"] is True


async def test_commit_stores_the_message_literally_and_runs_nothing(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    first, second = Path(f"/tmp/x_{secrets.token_hex(6)}"), Path(f"/tmp/x_{secrets.token_hex(6)}")
    message = (
        f"Fix $(touch {first}) and `touch {second}`; \"quoted\" 'single' && rm -rf / # not a comment\n\n--amend -m x"
    )
    (worktree / "page.txt").write_text("content\n")
    answer = await api.git("commit", body={"message": message})
    assert answer.status == 200, answer.text
    assert answer.body["committed"] is True and answer.body["files"] == ["page.txt"]
    assert not first.exists() and not second.exists()
    stored = git(["log", "-1", "--format=%B", "HEAD"], worktree, git_home)
    assert stored.startswith(message + "\n")
    trailer = git(["log", "-1", "--format=%(trailers:key=Thread-ID,valueonly)", "HEAD"], worktree, git_home)
    assert trailer.strip() == "t1"
    author = git(["log", "-1", "--format=%an <%ae>", "HEAD"], worktree, git_home).strip()
    assert author == "webordinary edge <edge@webordinary.com>"
    assert answer.body["commit"] == head(worktree, git_home)


async def test_nothing_to_commit_is_a_plain_answer(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    before = head(worktree, git_home)
    answer = await api.git("commit", body={"message": "nothing"})
    assert answer.status == 200
    assert answer.body["success"] is True and answer.body["committed"] is False
    assert answer.body["commit"] == before == head(worktree, git_home)


@pytest.mark.parametrize("body", [{"message": 5}, {"message": ""}, {"message": "  \n"}, {"message": "a\0b"}])
async def test_bad_commit_messages_are_refused(git_edge, remote, git_home, body):
    api, worktree = await started(git_edge, remote)
    (worktree / "page.txt").write_text("content\n")
    before = head(worktree, git_home)
    answer = await api.git("commit", body=body)
    assert answer.status == 400
    assert head(worktree, git_home) == before


async def test_push_sets_upstream_and_reports_status(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    (worktree / "page.txt").write_text("content\n")
    await api.git("commit", body={"message": "page"})
    answer = await api.git("push")
    assert answer.status == 200, answer.text
    assert answer.body["pushed"] is True and answer.body["branch"] == "thread-t1"
    assert answer.body["pullRequestUrl"] is None  # not a GitHub remote
    assert remote.head("thread-t1") == head(worktree, git_home)
    status = await api.git("status")
    assert status.body["upstream"] == status.body["comparedTo"] == "origin/thread-t1"
    assert (status.body["ahead"], status.body["canPush"]) == (0, False)
    again = await api.git("push")
    assert again.status == 200 and again.body["upToDate"] is True


async def test_auto_push_pushes_each_commit(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote, git_auto_push=True)
    (worktree / "page.txt").write_text("content\n")
    answer = await api.git("commit", body={"message": "page"})
    assert answer.status == 200, answer.text
    assert answer.body["committed"] is True and answer.body["pushed"] is True
    assert remote.head("thread-t1") == answer.body["commit"]


async def test_pushing_a_protected_branch_is_forbidden(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    switched = await api.git("branch", body={"branch": "production", "createNew": True})
    assert switched.status == 200, switched.text
    (worktree / "page.txt").write_text("content\n")
    await api.git("commit", body={"message": "page"})
    answer = await api.git("push", body={"force": True})
    assert answer.status == 403
    assert answer.body["success"] is False and "protected" in answer.body["error"]
    assert remote.head("production") is None


async def test_a_non_fast_forward_push_is_refused_until_forced_with_lease(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    (worktree / "mine.txt").write_text("mine\n")
    await api.git("commit", body={"message": "mine"})
    assert (await api.git("push")).status == 200
    theirs = remote.commit("thread-t1", {"theirs.txt": "theirs\n"})
    (worktree / "mine2.txt").write_text("more\n")
    await api.git("commit", body={"message": "more"})

    rejected = await api.git("push")
    assert rejected.status == 409, rejected.text
    assert "pull first" in rejected.body["hint"]
    assert remote.head("thread-t1") == theirs
    stale = await api.git("push", body={"force": True})  # the lease: we have not seen their commit
    assert stale.status == 409
    assert remote.head("thread-t1") == theirs

    fetched = await api.git("fetch")
    assert fetched.status == 200 and fetched.body["behind"] == 1 and fetched.body["ahead"] == 1
    forced = await api.git("push", body={"force": True})
    assert forced.status == 200, forced.text
    assert remote.head("thread-t1") == head(worktree, git_home)


async def test_pull_brings_remote_commits(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    (worktree / "mine.txt").write_text("mine\n")
    await api.git("commit", body={"message": "mine"})
    await api.git("push")
    remote.commit("thread-t1", {"theirs.txt": "theirs\n"})
    answer = await api.git("pull")
    assert answer.status == 200, answer.text
    assert answer.body["updated"] is True and answer.body["fastForward"] is True
    assert (worktree / "theirs.txt").read_text() == "theirs\n"

    remote.commit("main", {"from-main.txt": "main\n"})
    merged = await api.git("pull", body={"branch": "main"})
    assert merged.status == 200, merged.text
    assert merged.body["updated"] is True and merged.body["fastForward"] is False
    assert (worktree / "from-main.txt").exists() and (worktree / "theirs.txt").exists()


async def test_pull_of_a_branch_the_remote_does_not_have(git_edge, remote):
    api, _ = await started(git_edge, remote)
    own = await api.git("pull")
    assert own.status == 200 and own.body["updated"] is False
    missing = await api.git("pull", body={"branch": "no-such-branch"})
    assert missing.status == 404


async def test_a_conflicting_pull_is_aborted_and_changes_nothing(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    await api.git("push")
    (worktree / "README.md").write_text("# Ours\n")
    (worktree / "untracked.txt").write_text("left alone\n")
    assert (await api.git("commit", body={"message": "ours"})).body["committed"] is True
    (worktree / "notes.txt").write_text("untracked and kept\n")
    remote.commit("thread-t1", {"README.md": "# Theirs\n"})
    before = head(worktree, git_home)
    files_before = {p.name: p.read_bytes() for p in worktree.iterdir() if p.is_file()}

    answer = await api.git("pull")
    assert answer.status == 409, answer.text
    assert answer.body["conflicts"] == ["README.md"]
    assert head(worktree, git_home) == before
    assert {p.name: p.read_bytes() for p in worktree.iterdir() if p.is_file()} == files_before
    admin = Path(git(["rev-parse", "--git-dir"], worktree, git_home).strip())
    assert not (admin / "MERGE_HEAD").exists()
    status = await api.git("status")
    assert status.body["changes"]["untracked"] == ["notes.txt"] and not status.body["changes"]["conflicted"]


async def test_pull_with_uncommitted_changes_is_refused(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    remote.commit("main", {"README.md": "# Theirs\n"})
    (worktree / "README.md").write_text("# Unsaved\n")
    answer = await api.git("pull", body={"branch": "main"})
    assert answer.status == 409
    assert answer.body["files"] == ["README.md"]
    assert (worktree / "README.md").read_text() == "# Unsaved\n"


async def test_a_stale_index_lock_does_not_block_the_next_commit(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    admin = Path(git(["rev-parse", "--git-dir"], worktree, git_home).strip())
    (admin / "index.lock").write_text("")  # left by a git process killed mid-commit
    (worktree / "page.txt").write_text("content\n")
    with pytest.raises(AssertionError, match="index.lock"):
        git(["add", "page.txt"], worktree, git_home)  # the lock is real: git itself is blocked
    answer = await api.git("commit", body={"message": "after a crash"})
    assert answer.status == 200, answer.text
    assert answer.body["committed"] is True
    assert not (admin / "index.lock").exists()


async def test_two_threads_edit_and_commit_at_once_on_their_own_branches(git_edge, remote, git_home):
    api = await git_edge()
    inits = await asyncio.gather(api.init(t="a", repo_url=remote.url), api.init(t="b", repo_url=remote.url))
    paths = {a.body["threadId"]: Path(a.body["workspacePath"]) for a in inits}
    for thread, path in paths.items():
        (path / f"{thread}.txt").write_text(f"only in {thread}\n")
        (path / "README.md").write_text(f"# {thread}\n")
    commits = await asyncio.gather(
        api.git("commit", t="a", body={"message": "a"}), api.git("commit", t="b", body={"message": "b"})
    )
    assert all(c.status == 200 and c.body["committed"] for c in commits)
    pushes = await asyncio.gather(api.git("push", t="a"), api.git("push", t="b"))
    assert all(p.status == 200 for p in pushes), [p.text for p in pushes]
    assert remote.show("thread-a", "README.md") == "# a\n" and remote.show("thread-b", "README.md") == "# b\n"
    assert "b.txt" not in git(["ls-tree", "--name-only", "thread-a"], remote.bare, git_home)
    assert "a.txt" not in git(["ls-tree", "--name-only", "thread-b"], remote.bare, git_home)
    assert not (paths["a"] / "b.txt").exists() and not (paths["b"] / "a.txt").exists()


async def test_the_thread_lock_serialises_one_thread_but_not_others(git_edge, remote):
    api = await git_edge()
    await asyncio.gather(api.init(t="a", repo_url=remote.url), api.init(t="b", repo_url=remote.url))
    ws = api.app[WORKSPACES]
    for thread in ("a", "b"):
        (ws.thread_path(ThreadRef("c1", "u1", thread)) / "x.txt").write_text(thread)
    async with ws.thread_lock(ThreadRef("c1", "u1", "a")):  # as a Claude run on thread a would
        blocked = asyncio.create_task(api.git("commit", t="a", body={"message": "a"}))
        other = await api.git("commit", t="b", body={"message": "b"})
        assert other.status == 200 and other.body["committed"] is True
        assert not blocked.done()
    answer = await blocked
    assert answer.status == 200 and answer.body["committed"] is True


async def test_branch_endpoint_creates_and_switches(git_edge, remote, git_home):
    api, worktree = await started(git_edge, remote)
    created = await api.git("branch", body={"branch": "feature/pages", "createNew": True})
    assert created.status == 200, created.text
    assert created.body == {
        "success": True,
        "clientId": "c1",
        "userId": "u1",
        "threadId": "t1",
        "switched": True,
        "created": True,
        "branch": "feature/pages",
        "previousBranch": "thread-t1",
    }
    assert git(["symbolic-ref", "--short", "HEAD"], worktree, git_home).strip() == "feature/pages"
    assert api.app[WORKSPACES].registry.find(ThreadRef("c1", "u1", "t1")).branch == "feature/pages"
    back = await api.git("branch", body={"branch": "thread-t1"})
    assert back.status == 200 and back.body["created"] is False
    from_remote = await api.git("branch", body={"branch": "develop"})
    assert from_remote.status == 200, from_remote.text
    assert (worktree / "DEVELOP.md").exists()
    assert (await api.git("branch", body={"branch": "main"})).status == 409  # checked out by the clone
    assert (await api.git("branch", body={"branch": "nope"})).status == 404
    assert (await api.git("branch", body={"branch": "develop", "createNew": True})).status == 409


@pytest.mark.parametrize(
    "body",
    [
        {"branch": "-f"},
        {"branch": "a..b"},
        {"branch": "HEAD"},
        {"branch": "x.lock"},
        {"branch": 3},
        {},
        {"branch": "ok", "createNew": "yes"},
    ],
)
async def test_bad_branch_requests_are_refused(git_edge, remote, git_home, body):
    api, worktree = await started(git_edge, remote)
    answer = await api.git("branch", body=body)
    assert answer.status == 400, answer.text
    assert git(["symbolic-ref", "--short", "HEAD"], worktree, git_home).strip() == "thread-t1"


@pytest.mark.parametrize(
    "op,body", [("push", {"force": "yes"}), ("pull", {"branch": "--upload-pack=x"}), ("pull", {"branch": 1})]
)
async def test_bad_bodies_of_git_operations_are_refused(git_edge, remote, op, body):
    api, _ = await started(git_edge, remote)
    answer = await api.git(op, body=body)
    assert answer.status == 400, answer.text
    assert not Path("/tmp/pwned_upload").exists()


async def test_operations_on_a_thread_that_was_never_initialised(git_edge, remote):
    api, _ = await started(git_edge, remote)
    for op in ("status", "commit", "push", "pull", "fetch"):
        answer = await api.git(op, t="never")
        assert answer.status == 404, (op, answer.text)
        assert "POST /api/init" in answer.body["hint"]


def write_hook(folder: Path, name: str, canary: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    hook = folder / name
    hook.write_text(f"#!/bin/sh\necho {name} >> {canary}\n")
    hook.chmod(0o755)


async def test_hooks_and_fsmonitor_written_by_the_agent_never_run(git_edge, remote, settings, git_home, tmp_path):
    api, worktree = await started(git_edge, remote)
    project = settings.workspace_path / "c1" / "u1" / "project"
    canary = tmp_path / "ran.txt"
    names = (
        "pre-commit",
        "commit-msg",
        "post-commit",
        "pre-push",
        "post-checkout",
        "post-merge",
        "reference-transaction",
    )
    for name in names:
        write_hook(project / ".git" / "hooks", name, canary)
        write_hook(tmp_path / "elsewhere", name, canary)
    git(["config", "core.hooksPath", str(tmp_path / "elsewhere")], project, git_home)
    monitor = tmp_path / "fsmonitor.sh"
    monitor.write_text(f"#!/bin/sh\necho fsmonitor >> {canary}\n")
    monitor.chmod(0o755)
    git(["config", "core.fsmonitor", str(monitor)], project, git_home)

    (worktree / "page.txt").write_text("content\n")
    assert (await api.git("status")).status == 200
    assert (await api.git("commit", body={"message": "page"})).body["committed"] is True
    assert (await api.git("push")).status == 200
    remote.commit("thread-t1", {"theirs.txt": "x\n"})
    assert (await api.git("pull")).status == 200
    assert (await api.git("branch", body={"branch": "other", "createNew": True})).status == 200
    assert (await api.init(t="t2")).status == 200
    assert not canary.exists()
    # The trap is real: the same repository runs them for a plain git.
    (worktree / "more.txt").write_text("more\n")
    git(["add", "more.txt"], worktree, git_home)
    git(["commit", "-q", "-m", "plain git"], worktree, git_home)
    assert "pre-commit" in canary.read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the workspace to another uid")
async def test_a_workspace_owned_by_another_uid_still_works(git_edge, remote, settings, git_home):
    api, worktree = await started(git_edge, remote)
    user = settings.workspace_path / "c1" / "u1"
    for path in [user, *user.rglob("*")]:  # as on EFS: the files belong to someone else
        os.lchown(path, 65534, 65534)
    with pytest.raises(AssertionError, match="dubious ownership"):
        git(["status"], worktree, git_home)  # plain git refuses such a repository
    (worktree / "page.txt").write_text("content\n")
    answer = await api.git("commit", body={"message": "page"})
    assert answer.status == 200 and answer.body["committed"] is True, answer.text
    assert (await api.git("push")).status == 200
    assert user.stat().st_uid == 65534  # and the edge changed no ownership


def test_a_commit_answers_a_failed_push_or_commit_in_its_own_keys():
    pushed = CommitResult(True, "abc", "thread-t1", "m", ["a.txt"], push=PushResult("thread-t1", False, False, None))
    assert list(pushed.as_json()) == [
        "committed", "commit", "branch", "filesChanged", "files", "message",
        "pushed", "remote", "forced", "upToDate", "pullRequestUrl",
    ]
    refused = CommitResult(True, "abc", "thread-t1", "m", ["a.txt"], push_error="rejected")
    assert refused.as_json() == {
        "committed": True, "commit": "abc", "branch": "thread-t1", "filesChanged": 1, "files": ["a.txt"],
        "message": "m", "pushed": False, "pushError": "rejected",
    }
    assert CommitResult(False, None, None, "", error="locked").as_json() == {"committed": False, "commitError": "locked"}
