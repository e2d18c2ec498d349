"""A machine without git or npm gets one line saying what to install, not a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def edge(tmp_path: Path, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(path), "HOME": str(tmp_path), "LANG": "C.UTF-8", "WORKSPACE_PATH": str(tmp_path / "ws"), "PORT": "1"}
    return subprocess.run([sys.executable, "-m", "edge", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_serve_without_git_says_install_git(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = edge(tmp_path, empty, "serve")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "edge: git is not installed; install it (Debian: apt-get install git) and run this again"
    ]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_demo_without_npm_says_install_npm(tmp_path):
    only_git = tmp_path / "bin"
    only_git.mkdir()
    os.symlink(shutil.which("git"), only_git / "git")
    result = edge(tmp_path, only_git, "demo", "--workspace", str(tmp_path / "demo"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "edge: npm is not installed; install Node.js with npm (Debian: apt-get install npm) and run this again"
    ]
    assert not (tmp_path / "demo").exists()  # nothing was started or written
