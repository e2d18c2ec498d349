"""The supervisor's small parts: log tail, port pool, Node version check, git exclude, environment."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from edge.settings import Settings
from preview.deps import exclude_from_git
from preview.logs import LogTail
from preview.node import AstroInstall, PreviewError, check_engines, child_env
from preview.ports import PortPool
from tests.conftest import free_port


def test_the_log_tail_keeps_clean_complete_lines_and_is_bounded(tmp_path):
    log = LogTail(tmp_path / "logs" / "s.log", max_lines=3)
    log.feed(b"\x1b[32mgreen\x1b[39m line\nhalf ")
    assert log.tail() == ["green line"]
    log.feed(b"done\nprogress 1\rprogress 2\n")
    log.feed(b"a\nb\n")
    assert log.tail() == ["progress 2", "a", "b"]
    log.close()
    assert (tmp_path / "logs" / "s.log").read_text().splitlines() == ["green line", "half done", "progress 2", "a", "b"]


async def test_followers_get_the_backlog_then_new_lines_until_close(tmp_path):
    log = LogTail(tmp_path / "s.log")
    log.write("old")
    seen: list[str] = []

    async def follow() -> None:
        async for line in log.follow(backlog=5):
            seen.append(line)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    log.write("new")
    log.close()
    await asyncio.wait_for(task, 5)
    assert seen == ["old", "new"]


def test_the_port_pool_skips_ports_in_use_and_held():
    base = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        pool = PortPool(base, size=50)
        first = pool.acquire()
        second = pool.acquire()
    assert base not in (first, second)
    assert first != second
    pool.release(first)
    assert first not in pool.held


def test_an_old_node_is_refused_with_what_to_do():
    astro = AstroInstall(version="7.3.5", entry=Path("/x"), engines=">=22.12.0", has_dev_lock=True)
    with pytest.raises(PreviewError) as raised:
        check_engines(astro, "/usr/bin/node", "20.20.2")
    assert str(raised.value) == (
        "Astro 7.3.5 needs Node >=22.12.0, but NODE_BINARY (/usr/bin/node) is v20.20.2. "
        "Set NODE_BINARY to a Node.js that satisfies >=22.12.0 (or leave NODE_FETCH on, and the edge fetches one from npm)."
    )
    check_engines(astro, "/usr/bin/node", "22.12.0")
    check_engines(AstroInstall("5.18.2", Path("/x"), "18.20.8 || ^20.3.0 || >=22.0.0", False), "node", "20.20.2")


def test_child_processes_inherit_no_secrets(tmp_path):
    settings = Settings.from_env({
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/edge",
        "GITHUB_TOKEN": "ghp_secret",
        "EDGE_API_TOKEN": "api-secret",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "AWS_ACCESS_KEY_ID": "AKIA0000",
        "CLAUDECODE": "1",
        "HTTPS_PROXY": "http://proxy.invalid:3128",
        "WORKSPACE_PATH": str(tmp_path),
    })
    env = child_env(settings, "/opt/node22/bin/node")
    assert env["PATH"] == "/opt/node22/bin:/usr/bin:/bin"
    assert env["HOME"] == "/home/edge"
    assert env["ASTRO_DEV_BACKGROUND"] == "0" and env["ASTRO_TELEMETRY_DISABLED"] == "1"
    assert env["ASTRO_DISABLE_UPDATE_CHECK"] == "true"
    values = "\n".join(f"{k}={v}" for k, v in env.items())
    for secret in ("ghp_secret", "api-secret", "aws-secret", "AKIA0000", "CLAUDECODE", "proxy.invalid"):
        assert secret not in values
    assert child_env(settings, "/n/node", network=True)["HTTPS_PROXY"] == "http://proxy.invalid:3128"


def test_the_git_exclude_is_added_once_to_the_common_dir(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    exclude = repo / ".git" / "info" / "exclude"
    exclude.write_text("# existing\n*.log")
    exclude_from_git(repo)
    exclude_from_git(repo)
    lines = exclude.read_text().splitlines()
    assert lines[:2] == ["# existing", "*.log"]
    assert lines.count("/node_modules") == 1 and lines.count("/.astro") == 1
