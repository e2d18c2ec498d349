"""The image, built from the Dockerfile and run for real with podman.

``scripts/image.sh`` builds the repository's Dockerfile with podman from local stand-ins
for its two base images (no image registry is reachable here; see that script). One
container then runs the whole loop a client's task runs: ``/health`` as uid 1000,
``/api/init`` on a mounted local repository, the preview through the edge with the public
host (``npm ci`` and Astro inside the container), an execute with the simulation executor,
``claude --version``, and ``podman stop`` ending with exit 0 and no process left. The
entrypoint's refusals run in containers of their own.

Under the test command (EDGE_TESTS_STRICT=1) an image that cannot be built is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import free_port
from tests.fixtures_astro import require
from tests.support.polling import wait_until_blocking

ROOT = Path(__file__).resolve().parent.parent
TAG = "localhost/webordinary-edge:test"
TOKEN = "ghp_" + "Z9y8X7w6V5" * 3 + "u4T3s2"
API_TOKEN = "t" * 40
PUBLIC_HOST = "edit.amelia.example.test"
STOP_TIMEOUT = 20  # the stopTimeout the README asks for: EDGE_DRAIN_SECONDS (10) + 10
CLAUDE_CODE_VERSION = re.search(r"^ARG CLAUDE_CODE_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
EXIT_REFUSED = 64  # entrypoint.sh's documented exit code for a refused start

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def report(config: pytest.Config, line: str) -> None:
    """Shown in the test run's output even with -q (the image size belongs in CI's log)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[container] {line}")


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    require(shutil.which("podman") is not None and shutil.which("debootstrap") is not None, "podman and debootstrap are not installed")
    started = time.monotonic()
    build = subprocess.run(["bash", str(ROOT / "scripts" / "image.sh"), TAG], capture_output=True, text=True, timeout=1700)
    if build.returncode != 0:
        require(False, f"the image did not build:\n{build.stderr[-4000:]}")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", TAG).stdout.strip())
    report(request.config, f"image {TAG}: {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f} s")
    return TAG


def site_repository(root: Path) -> Path:
    """examples/site as a bare repository, owned by uid 1000 like the workspace."""
    bare, work = root / "site.git", root / "site"
    env = {"PATH": os.environ["PATH"], "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"}
    run = lambda *a, cwd=root: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *a],
                                              cwd=cwd, env=env, check=True, capture_output=True)  # noqa: E731
    run("init", "-q", "--bare", "-b", "main", str(bare))
    shutil.copytree(ROOT / "examples" / "site", work, ignore=shutil.ignore_patterns("node_modules", ".astro", "dist"))
    run("init", "-q", "-b", "main", cwd=work)
    run("add", "-A", cwd=work)
    run("commit", "-qm", "site", cwd=work)
    run("push", "-q", str(bare), "HEAD:main", cwd=work)
    return bare


def chown_tree(path: Path, uid: int = 1000) -> None:
    for folder, dirs, files in os.walk(path):
        os.chown(folder, uid, uid)
        for name in files:
            os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)


@dataclass
class Container:
    name: str
    port: int
    started: float  # time.monotonic() at `podman run`

    def request(self, method: str, path: str, body: dict | None = None, host: str = PUBLIC_HOST,
                timeout: float = 60) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Host": host, "Authorization": f"Bearer {API_TOKEN}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
        status, text = self.request(method, path, body, timeout=timeout)
        return status, json.loads(text)

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *argv, check=False)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def log_tail(self) -> str:
        """The end of the container's log, for a failure message."""
        return f"container log:\n{self.logs()[-4000:]}"

    def wait_for(self, check: Callable[[], Any], what: str, timeout: float) -> Any:
        """``check()`` once it is truthy (polled every 0.5 s); on timeout fail with the log's end."""
        return wait_until_blocking(check, what, timeout, interval=0.5, detail=self.log_tail)


@pytest.fixture(scope="module")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    root = tmp_path_factory.mktemp("container")
    workspace = root / "workspace"
    workspace.mkdir()
    repos = root / "repos"
    repos.mkdir()
    site_repository(repos)
    chown_tree(root)
    port = free_port()
    name = f"edge-test-{os.getpid()}"
    env = {
        "GITHUB_TOKEN": TOKEN,
        "EDGE_API_TOKEN": API_TOKEN,
        "EDGE_PUBLIC_HOSTS": PUBLIC_HOST,
        "GIT_ALLOW_LOCAL": "1",
        "AUTO_SHUTDOWN_MINUTES": "0",
    }
    started = time.monotonic()
    # Published on loopback only; the image's own 0.0.0.0:8080 inside the container.
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "--stop-timeout", str(STOP_TIMEOUT),
           "-v", f"{workspace}:/workspace", "-v", f"{repos}:/repos:ro",
           *(f"--env={key}={value}" for key, value in env.items()), image)
    box = Container(name, port, started)
    try:
        yield box
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def health(box: Container) -> dict | None:
    try:
        status, body = box.api("GET", "/health", timeout=5)
    except (OSError, ValueError):
        return None
    return body if status == 200 else None


def test_health_answers_and_every_process_runs_as_uid_1000(container, request):
    body = container.wait_for(lambda: health(container), "/health to answer", 60)
    report(request.config, f"/health answered {time.monotonic() - container.started:.1f} s after podman run")
    assert body["status"] == "healthy"
    # Every process in the container (tini, the entrypoint's exec'd edge, its workers).
    owners = container.exec("sh", "-c", "for s in /proc/[0-9]*/status; do awk '/^Uid:/{print $2}' \"$s\"; done")
    assert owners.returncode == 0, owners.stderr
    assert set(owners.stdout.split()) == {"1000"}
    inspect = json.loads(podman("image", "inspect", container_image(container)).stdout)[0]
    assert inspect["Healthcheck"]["Test"][:2] == ["CMD", "python"]  # --format docker kept HEALTHCHECK


def container_image(box: Container) -> str:
    return podman("inspect", "--format", "{{.ImageName}}", box.name).stdout.strip()


def test_doctor_passes_inside(container):
    doctor = container.exec("edge", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert re.search(r"^OK +event loop +uvloop ", doctor.stdout, re.M), doctor.stdout  # the image has uvloop


def test_the_edge_serves_on_uvloop_inside(container):
    container.wait_for(lambda: health(container), "/health to answer", 60)
    assert "event loop uvloop" in container.logs()


def test_claude_code_runs_inside(container):
    version = container.exec("claude", "--version")
    assert version.returncode == 0, version.stderr
    assert CLAUDE_CODE_VERSION in version.stdout
    where = container.exec("sh", "-c", 'command -v "$CLAUDE_CLI"')
    assert where.stdout.strip() == "/usr/local/bin/claude"


def test_init_then_preview_through_the_edge_then_execute(container, request):
    container.wait_for(lambda: health(container), "/health to answer", 60)
    thread = {"clientId": "amelia", "userId": "owner", "threadId": "t1"}
    status, body = container.api("POST", "/api/init", {**thread, "repoUrl": "/repos/site.git"})
    assert status == 200 and body["success"], body
    session = body["sessionId"]
    path = f"/session/{session}/"

    def preview() -> str | None:
        try:
            code, page = container.request("GET", path, timeout=30)
        except OSError:
            return None
        return page if code == 200 else None

    page = container.wait_for(preview, "the preview to answer 200", 600)
    report(request.config, f"first preview 200 {time.monotonic() - container.started:.1f} s after podman run")
    assert "Welcome to Amelia" in page
    # The public host is the only one allowed: another Host is refused, never proxied.
    code, _ = container.request("GET", path, host="elsewhere.example.test")
    assert code == 421

    status, run = container.api("POST", "/api/execute", {**thread, "instruction": "Say hello from the container",
                                                          "autoCommit": True}, timeout=300)
    assert status == 200 and run["success"], run
    assert run["mode"] == "simulation" and run["filesChanged"]
    assert run["commit"]
    updated = container.wait_for(
        lambda: (p := preview()) and "Say hello from the container" in p and p, "the preview to show the change", 120
    )
    assert "data-webordinary-simulation" in updated


def test_stop_exits_0_within_the_stop_timeout_and_leaves_no_process(container, request):
    container.wait_for(lambda: health(container), "/health to answer", 60)
    top = podman("top", container.name, "hpid", "args").stdout.splitlines()[1:]
    host_pids = [int(line.split()[0]) for line in top if line.split()]
    assert any("astro" in line for line in top), top  # the dev server from the test above is among them
    started = time.monotonic()
    podman("stop", "-t", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - started
    report(request.config, f"podman stop took {took:.1f} s")
    state = json.loads(podman("inspect", container.name).stdout)[0]["State"]
    assert state["ExitCode"] == 0, container.logs()[-4000:]
    assert took < STOP_TIMEOUT, f"podman stop took {took:.1f} s (so it needed SIGKILL)"
    left = [pid for pid in host_pids if Path(f"/proc/{pid}").exists() and not zombie_or_reused(pid)]
    assert left == [], f"processes left after stop: {left}"


def zombie_or_reused(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def run_refused(image: str, *args: str) -> subprocess.CompletedProcess[str]:
    return podman("run", "--rm", *args, image, timeout=120, check=False)


def test_missing_github_token_is_refused_with_its_exit_code(image):
    result = run_refused(image, "--env", f"EDGE_API_TOKEN={API_TOKEN}")
    assert result.returncode == EXIT_REFUSED, result.stdout + result.stderr
    assert "GITHUB_TOKEN is not set" in result.stderr


def test_unwritable_workspace_is_refused_with_its_exit_code(image, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir(mode=0o755)  # owned by root: uid 1000 cannot write
    os.chmod(workspace, 0o755)
    result = run_refused(image, "-v", f"{workspace}:/workspace", "--env", f"GITHUB_TOKEN={TOKEN}",
                         "--env", f"EDGE_API_TOKEN={API_TOKEN}")
    assert result.returncode == EXIT_REFUSED, result.stdout + result.stderr
    assert re.search(r"WORKSPACE_PATH \(/workspace\) is not writable by uid 1000", result.stderr), result.stderr
    assert TOKEN not in result.stdout + result.stderr
