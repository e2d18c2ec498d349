"""Idle auto-shutdown of a real ``python -m edge serve``: it marks sessions idle and exits 0 on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.fixtures_dynamodb import FakeDynamo
from tests.support.polling import wait_until_blocking

ROOT = Path(__file__).resolve().parent.parent


def _request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _start(tmp_path: Path, git_home: Path, minutes: float, extra: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(git_home),
        "PORT": str(port),
        "EDGE_HOST": "127.0.0.1",
        "WORKSPACE_PATH": str(tmp_path / "workspace"),
        "GIT_ALLOW_LOCAL": "1",
        "AUTO_SHUTDOWN_MINUTES": str(minutes),
        **(extra or {}),
    }
    log = open(tmp_path / f"edge-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log_text = (tmp_path / f"edge-{port}.log").read_text

    def healthy() -> bool:
        assert proc.poll() is None, log_text()
        try:
            return _request(port, "GET", "/health")[0] == 200
        except OSError:
            return False

    try:
        wait_until_blocking(healthy, "the edge's /health", 30, detail=log_text)
    except AssertionError:
        proc.kill()
        raise
    return proc, port


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_exit(proc: subprocess.Popen, timeout: float, poll=None) -> int:
    def exited() -> bool:
        if proc.poll() is None and poll is not None:
            poll()
        return proc.poll() is not None

    try:
        wait_until_blocking(exited, "the edge to stop by itself", timeout, interval=0.5)
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode


@pytest.fixture
def moto_env(dynamodb: FakeDynamo) -> dict:
    return {**dynamodb.env, "DYNAMODB_TABLE": dynamodb.table}


def test_an_idle_edge_marks_sessions_idle_and_exits_0(tmp_path, git_home, remote, dynamodb, moto_env):
    proc, port = _start(tmp_path, git_home, 0.05, moto_env)  # 3 s
    try:
        status, body = _request(port, "POST", "/api/init", {"clientId": "c1", "userId": "u1", "threadId": "t1", "repoUrl": remote.url})
        assert status == 200, body
        sid = body["sessionId"]

        def probe() -> None:  # load-balancer health checks are not activity
            try:
                _request(port, "GET", "/health")
            except OSError:
                pass

        assert _wait_exit(proc, 120, probe) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _group_gone(proc.pid)  # no child left behind
    saved = json.loads((tmp_path / "workspace" / ".edge" / "sessions.json").read_text())
    assert saved["sessions"][sid]["status"] == "idle"
    assert dynamodb.wait_item(sid, lambda item: item is not None and item["status"] == "expired")  # Hermes: not served
    assert "stopping the edge" in next(tmp_path.glob("edge-*.log")).read_text()


def test_activity_keeps_the_edge_alive_past_the_idle_time(tmp_path, git_home):
    minutes = 0.05  # 3 s
    proc, port = _start(tmp_path, git_home, minutes)
    try:
        keep_until = time.monotonic() + 3 * minutes * 60
        while time.monotonic() < keep_until:
            assert _request(port, "GET", "/api/sessions")[0] == 200
            assert proc.poll() is None
            time.sleep(1)
        assert proc.poll() is None  # alive well past AUTO_SHUTDOWN_MINUTES
        assert _wait_exit(proc, 120) == 0  # and stops once left alone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _group_gone(proc.pid)
