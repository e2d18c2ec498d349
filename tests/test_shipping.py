"""Shipping: the Dockerfile and entrypoint.sh, linted and run for real.

The entrypoint runs against a temporary HOME and WORKSPACE_PATH with real git;
one test lets it exec the real ``edge serve`` and stops it with SIGTERM. The image
itself is built and run by tests/test_container.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from edge.doctor import GITHUB_TOKEN_SHAPE
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # .venv/bin: shellcheck and hadolint come from the test extras
ENTRYPOINT = ROOT / "entrypoint.sh"
DOCKERFILE = ROOT / "Dockerfile"
TOKEN = "ghp_" + "Z9y8X7w6V5" * 3 + "u4T3s2"


def lint(tool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), str(path)], capture_output=True, text=True, timeout=120)


def test_shellcheck_entrypoint():
    result = lint("shellcheck", ENTRYPOINT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_dockerfile():
    result = lint("hadolint", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def entry_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """Only these variables: no token or git config of the machine leaks in."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    base = {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "WORKSPACE_PATH": str(tmp_path / "workspace"),
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    base.update(env)
    return {k: v for k, v in base.items() if v is not None}


def entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ENTRYPOINT), *args], cwd=tmp_path, env=entry_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=60)


def git(tmp_path: Path, *args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    return subprocess.run(["git", *args], env=entry_env(tmp_path, **env), input=input, capture_output=True, text=True, timeout=60)


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def test_entrypoint_configures_git_without_writing_the_token(tmp_path):
    workspace = tmp_path / "workspace"
    existing = workspace / "amelia" / "owner"
    existing.mkdir(parents=True)
    existing.chmod(0o700)
    os.chown(existing, 12345, 12345)  # what chown -R / chmod -R would change
    (existing / "metadata.json").write_text("{}")
    os.chmod(existing / "metadata.json", 0o600)
    before = {p: os.stat(p) for p in (workspace, existing, existing / "metadata.json")}

    result = entrypoint(tmp_path, "touch", str(tmp_path / "ran"), GITHUB_TOKEN=TOKEN,
                        GIT_USER_NAME="Amelia Bot", GIT_USER_EMAIL="bot@amelia.example")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran").exists(), "the entrypoint execs the command it is given"

    def config(*key: str) -> str:
        return git(tmp_path, "config", "--global", *key).stdout.strip()

    assert config("--get", "user.name") == "Amelia Bot"
    assert config("--get", "user.email") == "bot@amelia.example"
    assert str(workspace) in config("--get-all", "safe.directory").splitlines()

    ask = "protocol=https\nhost=github.com\n\n"
    filled = git(tmp_path, "credential", "fill", input=ask, GITHUB_TOKEN=TOKEN)
    assert filled.returncode == 0, filled.stderr
    assert f"password={TOKEN}" in filled.stdout.splitlines()
    assert "username=x-access-token" in filled.stdout.splitlines()
    # The token is read when git runs: without it in the environment, git gets nothing.
    unset = git(tmp_path, "credential", "fill", input=ask)
    assert unset.returncode != 0 and "password=" not in unset.stdout
    other = git(tmp_path, "credential", "fill", input="protocol=https\nhost=evil.example\n\n", GITHUB_TOKEN=TOKEN)
    assert TOKEN not in other.stdout, "the helper answers only for GIT_ALLOWED_HOSTS"

    for path in files_under(tmp_path / "home", workspace):
        assert TOKEN.encode() not in path.read_bytes(), f"the token was written to {path}"
    assert TOKEN not in result.stdout + result.stderr
    after = {p: os.stat(p) for p in before}
    for path, old in before.items():
        new = after[path]
        assert (stat.S_IMODE(new.st_mode), new.st_uid, new.st_gid) == (stat.S_IMODE(old.st_mode), old.st_uid, old.st_gid), path


def test_entrypoint_runs_twice_without_piling_up_config(tmp_path):
    for _ in range(2):
        assert entrypoint(tmp_path, "true", GITHUB_TOKEN=TOKEN).returncode == 0
    values = git(tmp_path, "config", "--global", "--get-all", "safe.directory").stdout.splitlines()
    assert len(values) == len(set(values)) == 2
    helpers = git(tmp_path, "config", "--global", "--get-all", "credential.https://github.com.helper").stdout.splitlines()
    assert len(helpers) == 1


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (TOKEN + "\n", "line break"),
        (" " + TOKEN, "whitespace"),
        ("ghp_short", "does not look like a GitHub token"),
        ("hunter2-not-a-token-at-all", "does not look like a GitHub token"),
        ("ghp_" + "a" * 35 + "!", "does not look like a GitHub token"),
    ],
)
def test_malformed_token_is_refused_before_anything_is_written(tmp_path, token, message):
    result = entrypoint(tmp_path, "touch", str(tmp_path / "ran"), GITHUB_TOKEN=token)
    assert result.returncode != 0
    assert "GITHUB_TOKEN" in result.stderr and message in result.stderr
    assert token.strip() not in result.stdout + result.stderr
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / "home" / ".gitconfig").exists()
    assert not (tmp_path / "workspace").exists()


def test_container_mode_requires_a_token(tmp_path):
    refused = entrypoint(tmp_path, "true", EDGE_CONTAINER="1")
    assert refused.returncode != 0
    assert "GITHUB_TOKEN is not set" in refused.stderr
    allowed = entrypoint(tmp_path, "true")  # a laptop: only a warning
    assert allowed.returncode == 0 and "warning" in allowed.stderr


def test_unusable_workspace_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    for path, message in ((file, "is not a folder"), (file / "workspace", "cannot create WORKSPACE_PATH")):
        result = entrypoint(tmp_path, "true", GITHUB_TOKEN=TOKEN, WORKSPACE_PATH=str(path))
        assert result.returncode != 0
        assert message in result.stderr


def test_bad_allowed_host_is_refused(tmp_path):
    result = entrypoint(tmp_path, "true", GITHUB_TOKEN=TOKEN, GIT_ALLOWED_HOSTS="github.com,evil;rm")
    assert result.returncode != 0 and "GIT_ALLOWED_HOSTS" in result.stderr
    assert not (tmp_path / "home" / ".gitconfig").exists()


def test_token_shapes_agree_with_the_doctor():
    shell_pattern = re.search(r"^TOKEN_SHAPE='(.*)'$", ENTRYPOINT.read_text(), re.M)
    assert shell_pattern is not None
    assert shell_pattern.group(1) == GITHUB_TOKEN_SHAPE.pattern
    samples = [TOKEN, "github_pat_" + "Ab_1" * 20 + "xy", "gho_" + "q" * 36, "ghs_" + "Q1" * 18, "0123456789abcdef0123456789abcdef01234567",
               "ghp_x", "ghx_" + "a" * 36, "0123456789ABCDEF0123456789ABCDEF01234567", "ghp_" + "a" * 36 + "\n"]
    for sample in samples:
        in_bash = subprocess.run(["bash", "-c", '[[ $1 =~ $2 ]]', "_", sample, shell_pattern.group(1)], timeout=30).returncode == 0
        assert in_bash == bool(GITHUB_TOKEN_SHAPE.fullmatch(sample)), sample
    assert sum(bool(GITHUB_TOKEN_SHAPE.fullmatch(s)) for s in samples) == 5


async def run_entrypoint_async(tmp_path: Path, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(ENTRYPOINT), "true", cwd=tmp_path, env=entry_env(tmp_path, **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, stderr.decode()


async def test_live_token_check_only_warns(tmp_path, serve):
    """VALIDATE_GITHUB_TOKEN=1 asks GitHub's /user; a refusal or silence warns, never stops the start."""
    seen: list[str] = []
    answer = {"status": 200}
    hang = asyncio.Event()

    async def user(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if answer["status"] == 0:
            await hang.wait()
        return web.json_response({}, status=answer["status"])

    app = web.Application()
    app.router.add_get("/user", user)
    server = await serve(app)
    env = {"GITHUB_TOKEN": TOKEN, "VALIDATE_GITHUB_TOKEN": "1", "GITHUB_API_URL": server.origin, "VALIDATE_GITHUB_TOKEN_TIMEOUT": "2"}

    code, stderr = await run_entrypoint_async(tmp_path, **env)
    assert code == 0 and "GitHub accepts GITHUB_TOKEN" in stderr
    assert seen == [f"Bearer {TOKEN}"]

    answer["status"] = 401
    code, stderr = await run_entrypoint_async(tmp_path, **env)
    assert code == 0 and "GitHub refused GITHUB_TOKEN (401)" in stderr and TOKEN not in stderr

    answer["status"] = 0  # never answers: the budget ends the check, the start goes on
    try:
        code, stderr = await run_entrypoint_async(tmp_path, **env)
    finally:
        hang.set()
    assert code == 0 and "could not check GITHUB_TOKEN" in stderr
    assert (tmp_path / "home" / ".gitconfig").exists()


def dockerfile_instruction(name: str) -> str:
    """The last ``name`` instruction of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = re.findall(rf"^{name}\s+(.*)$", text, re.M)
    assert found, name
    return found[-1]


def healthcheck_argv() -> list[str]:
    command = dockerfile_instruction("HEALTHCHECK")
    return json.loads(command.split(" CMD ", 1)[1])


def test_dockerfile_contract():
    assert dockerfile_instruction("USER") == "1000:1000"
    assert dockerfile_instruction("EXPOSE") == "8080"
    assert json.loads(dockerfile_instruction("ENTRYPOINT")) == ["tini", "--", "/app/entrypoint.sh"]
    env = dockerfile_instruction("ENV")
    for setting in ("EDGE_HOST=0.0.0.0", "WORKSPACE_PATH=/workspace", "PORT=8080", "EDGE_CONTAINER=1"):
        assert setting in env.split()
    assert healthcheck_argv()[0] == "python"
    # Everything the image copies is in the build context .dockerignore lets through.
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = re.findall(r"^COPY (?!--from)(.+?) \S+$", DOCKERFILE.read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert source.startswith("--") or source in allowed, source


def test_entrypoint_starts_the_real_edge_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = entry_env(tmp_path, GITHUB_TOKEN=TOKEN, PORT=str(port), EDGE_HOST="127.0.0.1", EDGE_DRAIN_SECONDS="1",
                    AUTO_SHUTDOWN_MINUTES="0")
    proc = subprocess.Popen([str(ENTRYPOINT)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.load(response)
                break
            except OSError:
                time.sleep(0.2)
        assert health is not None and health["status"] == "healthy", proc.stderr.read() if proc.poll() is not None else "no answer"
        # The image's HEALTHCHECK command, as Docker would run it.
        check = subprocess.run([sys.executable, *healthcheck_argv()[1:]], env={**env, "PORT": str(port)}, timeout=30)
        assert check.returncode == 0
        proc.send_signal(signal.SIGTERM)  # exec: the signal reaches the edge itself
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = subprocess.run([sys.executable, *healthcheck_argv()[1:]], env={**env, "PORT": str(port)}, capture_output=True, timeout=30)
    assert stopped.returncode != 0, "the health check fails once the edge is gone"


def test_setup_pins_the_claude_code_of_the_image():
    """The tests run the Claude Code the image ships (scripts/setup.sh installs it for them)."""
    image = re.search(r"^ARG CLAUDE_CODE_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M)
    setup = re.search(r'^CLAUDE_CODE_VERSION="([^"]+)"', (ROOT / "scripts" / "setup.sh").read_text(), re.M)
    assert image and setup and image.group(1) == setup.group(1)
