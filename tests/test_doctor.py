"""``edge doctor`` run for real (``python -m edge doctor``) with a controlled environment."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_astro import CACHE, require

ROOT = Path(__file__).resolve().parent.parent
NODE22 = ROOT / ".cache" / "bin" / "node22"
ASTRO7 = ROOT / ".cache" / "astro" / "7"
TOKEN = "ghp_" + "A1b2C3d4E5" * 3 + "f6G7h8"  # the classic shape: 36 characters after ghp_


def doctor(tmp_path: Path, *args: str, wrap: list[str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the doctor with only these variables (PATH for git, node and npm)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "WORKSPACE_PATH": str(tmp_path / "workspace"),
        "NODE_BINARY": str(NODE22) if NODE22.exists() else "node",
    }
    base.update(env)
    argv = [*(wrap or []), sys.executable, "-m", "edge", "doctor", *args]
    return subprocess.run(argv, cwd=ROOT, env=base, capture_output=True, text=True, timeout=120)


def line(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The doctor's line for one check (with its fix line, if any)."""
    found = re.search(rf"^(OK|WARN|FAIL) +{re.escape(name)} .*(\n +fix: .*)?", result.stdout, re.M)
    assert found, f"no {name!r} check in:\n{result.stdout}\n{result.stderr}"
    return found.group(0)


def test_healthy_setup_exits_0(tmp_path):
    result = doctor(tmp_path, GITHUB_TOKEN=TOKEN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout
    for name in ("git", "node", "npm", "workspace", "api token", "GITHUB_TOKEN"):
        assert line(result, name).startswith(("OK", "WARN"))
    assert line(result, "workspace").startswith("OK")
    assert "classic personal access token" in line(result, "GITHUB_TOKEN")
    assert TOKEN not in result.stdout + result.stderr
    assert not (tmp_path / "workspace").exists(), "the doctor only checks; it never creates the workspace"


def test_the_event_loop_is_reported(tmp_path):
    import uvloop

    default = line(doctor(tmp_path), "event loop")
    assert default.startswith("OK") and default.endswith(f"uvloop {uvloop.__version__}")
    assert "asyncio" in line(doctor(tmp_path, EDGE_EVENT_LOOP="asyncio"), "event loop")
    blocker = tmp_path / "no-uvloop"  # a module named uvloop that cannot be imported
    blocker.mkdir()
    (blocker / "uvloop.py").write_text("raise ImportError('uvloop is hidden by the test')\n")
    hidden = line(doctor(tmp_path, PYTHONPATH=str(blocker)), "event loop")
    assert hidden.startswith("WARN") and "EDGE_EVENT_LOOP=asyncio" in hidden


def test_missing_node_fails(tmp_path):
    result = doctor(tmp_path, NODE_BINARY="/nonexistent")
    assert result.returncode == 1
    node = line(result, "node")
    assert node.startswith("FAIL") and "/nonexistent" in node and "fix: " in node
    assert line(result, "npm").startswith("FAIL")  # npm's JavaScript needs that Node
    assert re.search(r"^doctor: [1-9]\d* failed", result.stdout, re.M)


def test_workspace_that_is_a_file_fails(tmp_path):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    result = doctor(tmp_path, WORKSPACE_PATH=str(file))
    assert result.returncode == 1
    assert line(result, "workspace").startswith("FAIL")
    assert "not a folder" in line(result, "workspace")


def test_workspace_that_cannot_be_created_fails(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    result = doctor(tmp_path, WORKSPACE_PATH=str(file / "workspace"))
    assert result.returncode == 1
    assert "cannot be created" in line(result, "workspace")


def _read_only_wrapper(folder: Path) -> list[str]:
    """Run the command in a user+mount namespace where ``folder`` is a read-only bind mount.

    A real EROFS: as root (as the tests run) a chmod would not stop a write.
    """
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    return ["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(folder)]


def _can_unshare(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run([*_read_only_wrapper(probe), "true"], capture_output=True, timeout=30)
    return done.returncode == 0


def test_read_only_workspace_fails(tmp_path):
    if not _can_unshare(tmp_path):
        pytest.skip("unshare --map-root-user --mount is not permitted here")
    workspace = tmp_path / "workspace"
    (workspace / "site").mkdir(parents=True)
    result = doctor(tmp_path, wrap=_read_only_wrapper(workspace), WORKSPACE_PATH=str(workspace))
    assert result.returncode == 1, result.stdout + result.stderr
    check = line(result, "workspace")
    assert check.startswith("FAIL") and "not writable" in check and "Read-only file system" in check
    # The same folder, writable, is fine: the failure above came from the mount alone.
    assert line(doctor(tmp_path, WORKSPACE_PATH=str(workspace)), "workspace").startswith("OK")


def test_open_api_and_malformed_token_fail_without_printing_it(tmp_path):
    bad = "ghp_tooShortButSecret"
    result = doctor(tmp_path, EDGE_HOST="0.0.0.0", GITHUB_TOKEN=bad)
    assert result.returncode == 1
    assert line(result, "api token").startswith("FAIL")
    assert "EDGE_API_TOKEN" in line(result, "api token")
    assert line(result, "GITHUB_TOKEN").startswith("FAIL")
    assert bad not in result.stdout + result.stderr
    newline = doctor(tmp_path, GITHUB_TOKEN=TOKEN + "\n")
    assert "line break" in line(newline, "GITHUB_TOKEN") and newline.returncode == 1


def test_exposed_edge_with_a_token_and_public_hosts_is_fine(tmp_path):
    result = doctor(
        tmp_path, EDGE_HOST="0.0.0.0", EDGE_API_TOKEN="t" * 40, GITHUB_TOKEN=TOKEN,
        EDGE_PUBLIC_HOSTS="edit.client.example.com",
    )
    assert result.returncode == 0, result.stdout
    assert line(result, "api token").startswith("OK")
    assert "t" * 40 not in result.stdout


def test_container_mode_requires_github_token(tmp_path):
    result = doctor(tmp_path, EDGE_CONTAINER="1")
    assert result.returncode == 1
    assert line(result, "GITHUB_TOKEN").startswith("FAIL")
    assert line(doctor(tmp_path), "GITHUB_TOKEN").startswith("WARN")  # outside a container: a warning


def test_bad_setting_is_reported(tmp_path):
    result = doctor(tmp_path, PORT="eighty")
    assert result.returncode == 1
    assert "PORT" in line(result, "configuration")


def test_executor_without_its_cli_fails(tmp_path):
    result = doctor(tmp_path, CLAUDE_EXECUTOR="claude-code", CLAUDE_CLI="/nonexistent/claude")
    assert result.returncode == 1
    assert line(result, "executor").startswith("FAIL")


def test_the_claude_code_version_is_reported(tmp_path):
    cli = CACHE / "bin" / "claude"
    require(cli.exists(), "Claude Code (.cache/bin/claude) is not installed")
    ok = line(doctor(tmp_path, CLAUDE_EXECUTOR="claude-code", CLAUDE_CLI=str(cli)), "executor")
    assert ok.startswith("OK") and "2.1.332 (Claude Code)" in ok
    broken = tmp_path / "claude"
    broken.write_text("#!/bin/sh\necho 'cannot run' >&2\nexit 2\n")
    broken.chmod(0o755)
    failed = doctor(tmp_path, CLAUDE_EXECUTOR="claude-code", CLAUDE_CLI=str(broken))
    assert failed.returncode == 1 and line(failed, "executor").startswith("FAIL") and "cannot run" in line(failed, "executor")


SYSTEM_NODE = shutil.which("node")


def _major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(out.lstrip("v").split(".")[0])


def test_site_astro_version_against_node(tmp_path):
    require((ASTRO7 / "node_modules" / "astro").is_dir() and NODE22.exists(), "Astro 7 and Node 22")
    require(SYSTEM_NODE is not None and _major(SYSTEM_NODE) < 22, "Node 20 as `node`")
    old = doctor(tmp_path, "--site", str(ASTRO7), NODE_BINARY=str(SYSTEM_NODE), NODE_FETCH="0")
    assert old.returncode == 1
    assert line(old, "site node").startswith("FAIL") and ">=22.12" in line(old, "site node")
    fetching = doctor(tmp_path, "--site", str(ASTRO7), NODE_BINARY=str(SYSTEM_NODE))
    assert line(fetching, "astro").startswith("OK") and ">=22.12" in line(fetching, "astro")
    assert line(fetching, "site node").startswith("OK")
    assert "does not satisfy >=22.12.0: the edge fetches a Node that does from npm (node-linux-" in line(fetching, "site node")
    new = doctor(tmp_path, "--site", str(ASTRO7), NODE_BINARY=str(NODE22))
    assert line(new, "site node").startswith("OK") and "the site gets NODE_BINARY v22." in line(new, "site node"), new.stdout


def test_the_dynamodb_check_probes_what_the_writer_can_do(tmp_path, dynamodb):
    env = {**dynamodb.env, "GITHUB_TOKEN": TOKEN}
    result = doctor(tmp_path, DYNAMODB_TABLE=dynamodb.table, **env)
    assert line(result, "dynamodb").startswith("OK") and "UpdateItem allowed" in line(result, "dynamodb")
    assert dynamodb.item("edge-doctor-probe") is None  # the probe wrote nothing

    result = doctor(tmp_path, DYNAMODB_TABLE="no-such-table", **env)
    assert line(result, "dynamodb").startswith("FAIL") and "ResourceNotFoundException" in line(result, "dynamodb")
    assert result.returncode == 1

    dynamodb.client().create_table(
        TableName="hash-only", KeySchema=[{"AttributeName": "sessionId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "sessionId", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST",
    )
    result = doctor(tmp_path, DYNAMODB_TABLE="hash-only", **env)
    assert line(result, "dynamodb").startswith("FAIL") and "userId (RANGE)" in line(result, "dynamodb")
