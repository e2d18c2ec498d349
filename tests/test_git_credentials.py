"""GITHUB_TOKEN reaches git only at call time, only for allowed hosts, and is written nowhere.

The remote is ``git http-backend`` behind HTTPS on 127.0.0.1 requiring the
token by HTTP Basic auth (tests/fixtures_git.py), as GitHub does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from control.gitcmd import GitError, GitRunner
from tests.fixtures_git import TEST_TOKEN, git, git_settings


def https_overrides(server, token: str | None = TEST_TOKEN) -> dict:
    return {
        "git_allow_local": False,
        "git_allowed_hosts": ("127.0.0.1",),
        "github_token": token,
        "git_ssl_ca_info": server.ca_file,
    }


def secret_forms(token: str) -> list[bytes]:
    basic = base64.b64encode(f"x-access-token:{token}".encode())
    return [token.encode(), basic, basic.rstrip(b"=")]


def files_containing(root: Path, secrets: list[bytes]) -> list[Path]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(secret in data for secret in secrets):
                found.append(path)
    return found


async def test_clone_commit_push_pull_over_https_with_the_token(git_edge, git_http, settings, git_home, caplog):
    caplog.set_level(logging.DEBUG)
    api = await git_edge(**https_overrides(git_http))
    init = await api.init(repo_url=git_http.url())
    assert init.status == 200, init.text
    worktree = Path(init.body["workspacePath"])
    assert (worktree / "README.md").read_text() == "# Site\n"
    assert any(ok for _, _, ok in git_http.requests)  # the server did check the token

    (worktree / "page.txt").write_text("from the edge\n")
    commit = await api.git("commit", body={"message": "page"})
    assert commit.status == 200 and commit.body["committed"] is True, commit.text
    push = await api.git("push")
    assert push.status == 200, push.text
    assert git_http.remote.head("thread-t1") == commit.body["commit"]
    git_http.remote.commit("thread-t1", {"theirs.txt": "theirs\n"})
    pull = await api.git("pull")
    assert pull.status == 200 and pull.body["updated"] is True, pull.text
    assert (worktree / "theirs.txt").exists()
    assert (await api.git("fetch")).status == 200

    # The token is nowhere: not in the workspace (including .git/config), not in
    # HOME (no ~/.git-credentials), not in logs, not in any answer.
    secrets = secret_forms(TEST_TOKEN)
    assert files_containing(settings.workspace_path, secrets) == []
    assert files_containing(git_home, secrets) == []
    assert not (git_home / ".git-credentials").exists()
    assert all(TEST_TOKEN not in text for text in api.answers)
    assert TEST_TOKEN not in caplog.text
    origin = git(["config", "--get", "remote.origin.url"], worktree, git_home).strip()
    assert origin == git_http.url() and "@" not in origin


async def test_without_a_token_the_clone_fails_clearly(git_edge, git_http, settings):
    api = await git_edge(**https_overrides(git_http, token=None))
    answer = await api.init(repo_url=git_http.url())
    assert answer.status == 401, answer.text
    assert answer.body["success"] is False
    assert "credentials" in answer.body["error"] and "GITHUB_TOKEN" in answer.body["hint"]
    user = settings.workspace_path / "c1" / "u1"
    assert not user.exists()  # no half clone, no empty folders
    assert not any(ok for _, _, ok in git_http.requests)


async def test_a_wrong_token_fails_clearly_and_is_not_echoed(git_edge, git_http, settings, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "ghp_WrongToken_0123456789_doNotEcho"
    api = await git_edge(**https_overrides(git_http, token=wrong))
    answer = await api.init(repo_url=git_http.url())
    assert answer.status == 401, answer.text
    assert wrong not in answer.text and wrong not in caplog.text
    assert files_containing(settings.workspace_path, secret_forms(wrong)) == []


async def test_push_and_pull_without_the_token_fail_clearly(git_edge, git_http, settings):
    with_token = await git_edge(**https_overrides(git_http))
    assert (await with_token.init(repo_url=git_http.url())).status == 200
    worktree = settings.workspace_path / "c1" / "u1" / "threads" / "t1"
    (worktree / "page.txt").write_text("x\n")
    assert (await with_token.git("commit", body={"message": "x"})).body["committed"] is True

    without = await git_edge(**https_overrides(git_http, token=None))  # same workspace, token gone
    push = await without.git("push")
    assert push.status == 401, push.text
    assert git_http.remote.head("thread-t1") is None
    pull = await without.git("pull", body={"branch": "main"})
    assert pull.status == 401, pull.text


@pytest.mark.parametrize("tamper", ["url", "insteadOf"])
async def test_a_tampered_remote_gets_neither_token_nor_push(git_edge, git_http, settings, git_home, tamper):
    api = await git_edge(**https_overrides(git_http))
    assert (await api.init(repo_url=git_http.url())).status == 200
    project = settings.workspace_path / "c1" / "u1" / "project"
    elsewhere = f"https://localhost:{git_http.port}/site.git"  # same server, a host not in GIT_ALLOWED_HOSTS
    if tamper == "url":
        git(["config", "remote.origin.url", elsewhere], project, git_home)
    else:
        git(
            ["config", f"url.https://localhost:{git_http.port}/.insteadOf", f"https://127.0.0.1:{git_http.port}/"],
            project,
            git_home,
        )
    seen = len(git_http.requests)
    for op in ("push", "fetch", "pull"):
        answer = await api.git(op)
        assert answer.status == 409, answer.text
        assert "origin" in answer.body["error"]
    assert len(git_http.requests) == seen  # nothing was sent anywhere


async def test_the_credential_helper_answers_only_for_allowed_hosts(settings, git_home, tmp_path):
    runner = GitRunner(
        git_settings(settings, git_home, github_token=TEST_TOKEN, git_allowed_hosts=("127.0.0.1", "github.com"))
    )
    allowed = await runner.run(["credential", "fill"], cwd=tmp_path, input="protocol=https\nhost=127.0.0.1:8443\n\n")
    assert f"password={TEST_TOKEN}" in allowed.stdout and "username=x-access-token" in allowed.stdout
    other = await runner.run(
        ["credential", "fill"], cwd=tmp_path, input="protocol=https\nhost=evil.example.com\n\n", check=False
    )
    assert other.returncode != 0 and TEST_TOKEN not in other.stdout
    assert "terminal prompts disabled" in other.stderr
    assert TEST_TOKEN not in " ".join(runner.argv(["push"]))  # never on a command line


def test_scrub_removes_tokens_and_url_credentials(settings):
    runner = GitRunner(replace(settings, github_token=TEST_TOKEN))
    basic = base64.b64encode(f"x-access-token:{TEST_TOKEN}".encode()).decode()
    text = f"fatal: https://x-access-token:{TEST_TOKEN}@github.com/a/b.git {TEST_TOKEN} Basic {basic} http://u:p@h/x"
    scrubbed = runner.scrub(text)
    assert TEST_TOKEN not in scrubbed and basic not in scrubbed and "u:p@" not in scrubbed
    assert "https://***@github.com/a/b.git" in scrubbed


async def test_clone_progress_is_visible_in_the_thread_status(git_edge, git_http, settings):
    git_http.hold_upload_pack = asyncio.Event()
    api = await git_edge(**https_overrides(git_http))
    init = asyncio.create_task(api.init(repo_url=git_http.url()))
    await asyncio.wait_for(git_http.upload_pack_waiting.wait(), 30)
    during = await api.call("GET", "/api/init/c1/u1/t1")
    assert during.status == 200 and during.body["status"] == "cloning", during.text
    status = await api.git("status")
    assert status.status == 409 and status.body["status"] == "cloning"
    git_http.hold_upload_pack.set()
    answer = await init
    assert answer.status == 200, answer.text
    after = await api.call("GET", "/api/init/c1/u1/t1")
    assert after.body["status"] == "ready" and after.body["sessionId"] == answer.body["sessionId"]


def clone_processes(folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"clone" in cmdline and cmdline[0].endswith(b"git") and cwd.startswith(str(folder)):
            pids.append(int(entry.name))
    return pids


async def test_a_clone_killed_midway_leaves_a_workspace_the_next_init_can_use(git_edge, git_http, settings):
    git_http.hold_upload_pack = asyncio.Event()
    api = await git_edge(**https_overrides(git_http))
    init = asyncio.create_task(api.init(repo_url=git_http.url()))
    await asyncio.wait_for(git_http.upload_pack_waiting.wait(), 30)
    user = settings.workspace_path / "c1" / "u1"
    pids = clone_processes(user)
    assert pids, "the edge's git clone should be running"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # a process this test's edge started
    failed = await init
    assert failed.status >= 500 and failed.body["success"] is False, failed.text
    assert not (user / "project").exists()
    assert not any(p.name.startswith(".project.tmp-") for p in user.iterdir()) if user.exists() else True
    git_http.hold_upload_pack.set()
    again = await api.init(repo_url=git_http.url())
    assert again.status == 200, again.text
    assert (Path(again.body["workspacePath"]) / "README.md").exists()


async def test_git_itself_refuses_transports_outside_the_policy(settings, git_home, remote, tmp_path):
    strict = GitRunner(git_settings(settings, git_home, git_allow_local=False))
    refused = await strict.run(["ls-remote", "--", remote.url], cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "transport 'file' not allowed" in refused.stderr
    local = GitRunner(git_settings(settings, git_home, git_allow_local=True))
    assert (await local.run(["ls-remote", "--", remote.url], cwd=tmp_path)).stdout
    canary = tmp_path / "pwned"
    with pytest.raises(GitError):
        await local.run(["clone", f"ext::sh -c touch% {canary}", str(tmp_path / "x")], cwd=tmp_path)
    with pytest.raises(GitError):
        await local.run(["clone", "--upload-pack=touch " + str(canary), remote.url, str(tmp_path / "y")], cwd=tmp_path)
    assert not canary.exists()
