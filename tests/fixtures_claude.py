"""Claude at its boundaries: the real Claude Code CLI against a fake Bedrock endpoint, a fake
``claude`` executable (for what the real one cannot show: a crash, a grandchild), and a fake
Bedrock Converse server.

* ``claude_cli``: the pinned Claude Code that scripts/setup.sh installs (.cache/bin/claude);
* ``bedrock_model``: ``tests/fake_bedrock_stream.py`` served on 127.0.0.1 (scripted model turns
  as AWS event-stream), for the real CLI;
* ``edge_claude_env``: the edge's environment for the real CLI against ``bedrock_model``, turned
  into settings by ``Settings.from_env`` exactly as the edge reads them (no settings file);
* ``fake_claude``: writes an executable wrapper (the CLAUDE_CLI setting) that runs
  ``tests/fake_claude.py`` with its own log; ``calls()`` reads what each run saw.
* ``fake_bedrock``: an aiohttp app on 127.0.0.1 answering ``POST /model/<id>/converse``
  with scripted replies (JSON, or an error status with ``x-amzn-ErrorType``); it keeps
  every request body boto3 sent.
* ``claude_thread``: a real edge (git tests' settings), with a thread initialised from a
  local bare repository; returns the API client and the worktree.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from edge.settings import Settings
from tests.conftest import free_port
from tests.fake_bedrock_stream import FakeBedrockModel
from tests.fixtures_astro import CACHE, require
from tests.fixtures_git import GitApi
from tests.support.polling import answers, wait_until

REPO = Path(__file__).resolve().parent.parent


@dataclass
class FakeClaude:
    path: Path
    log: Path

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    async def wait_calls(self, count: int, deadline: float = 20.0) -> list[dict]:
        """The calls, once there are ``count`` of them (bounded wait)."""
        await wait_until(
            lambda: len(self.calls()) >= count,
            f"{count} calls of fake claude",
            deadline,
            detail=lambda: f"it was called {len(self.calls())} times",
        )
        return self.calls()


@pytest.fixture
def fake_claude(tmp_path: Path) -> FakeClaude:
    folder = tmp_path / "fake-claude"
    folder.mkdir()
    log = folder / "calls.jsonl"
    path = folder / "claude"
    path.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.fake_claude import main\n"
        f"sys.exit(main({str(log)!r}))\n"
    )
    path.chmod(0o755)
    return FakeClaude(path, log)


@pytest.fixture
def claude_cli() -> str:
    """The pinned Claude Code CLI (scripts/setup.sh installs it into .cache/bin)."""
    path = CACHE / "bin" / "claude"
    require(path.exists(), "Claude Code (.cache/bin/claude) is not installed")
    return str(path)


@pytest.fixture
async def bedrock_model(serve) -> AsyncIterator[FakeBedrockModel]:
    fake = FakeBedrockModel()
    server = await serve(fake.app())
    fake.origin = server.origin
    yield fake
    fake.released.set()  # hung calls end before the server stops


# The settings the Claude executors read; the rest come from the git tests' edge.
CLAUDE_FIELDS = ("claude_executor", "claude_cli", "claude_model", "claude_use_bedrock", "claude_max_retries",
                 "claude_max_turns", "claude_allow_shell", "claude_env", "aws_region", "execution_timeout")


@pytest.fixture
def edge_claude_env(claude_cli: str, bedrock_model: FakeBedrockModel) -> Callable[..., dict]:
    """``edge_claude_env(**env)`` → settings overrides from the edge's environment for the real CLI.

    Every variable the CLI gets comes from this environment through ``Settings.from_env``.
    """

    def overrides(**env: str) -> dict:
        base = {
            "CLAUDE_EXECUTOR": "claude-code",
            "CLAUDE_CLI": claude_cli,
            "CLAUDE_CODE_USE_BEDROCK": "1",
            "ANTHROPIC_BEDROCK_BASE_URL": bedrock_model.origin,
            "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
            "AWS_REGION": "us-east-1",
            "CLAUDE_MODEL": "fake-sonnet",
            "CLAUDE_CODE_MAX_RETRIES": "1",
        }
        merged = {k: v for k, v in {**base, **env}.items() if v is not None}
        settings = Settings.from_env(merged)
        return {name: getattr(settings, name) for name in CLAUDE_FIELDS}

    return overrides


def agent_pids(worktree: Path) -> list[int]:
    """Processes whose working directory is ``worktree`` (the agent and anything it started)."""
    target = os.path.realpath(worktree)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == target and not process_gone(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_gone(pid: int, deadline: float = 15.0) -> None:
    await wait_until(lambda: process_gone(pid), f"process {pid} to end", deadline)


@dataclass
class FakeBedrock:
    """Scripted Converse replies, in order; each is (status, headers, body)."""

    replies: list[tuple[int, dict, dict]] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    origin: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def reply(self, content: list[dict], stop: str = "end_turn") -> None:
        body = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
            "metrics": {"latencyMs": 1},
        }
        self.replies.append((200, {}, body))

    def tool_use(self, name: str, args: dict, use_id: str = "tooluse_1") -> dict:
        return {"toolUse": {"toolUseId": use_id, "name": name, "input": args}}

    def throttle(self) -> None:
        self.replies.append(
            (429, {"x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"},
             {"__type": "ThrottlingException", "message": "Too many requests, please wait before trying again."})
        )

    def error(self, status: int, error_type: str, message: str) -> None:
        self.replies.append((status, {"x-amzn-ErrorType": error_type}, {"message": message}))

    def hang(self) -> None:
        """The next call never answers (a Converse call stuck on a dead connection)."""
        self.replies.append((0, {}, {}))

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        self.requests.append(await request.json())
        if not self.replies:
            return web.json_response({"message": "no scripted reply left"}, status=500,
                                     headers={"x-amzn-ErrorType": "InternalServerException"})
        status, headers, body = self.replies.pop(0)
        if status == 0:
            await self.released.wait()  # until the test ends
            return web.json_response({"message": "released"}, status=500, headers={"x-amzn-ErrorType": "InternalServerException"})
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def fake_bedrock(serve, monkeypatch) -> AsyncIterator[FakeBedrock]:
    # Fake credentials for boto3 (signing only; the fake server does not check them).
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    fake = FakeBedrock()
    app = web.Application()
    app.router.add_post("/model/{model_id}/converse", fake.handle)
    server = await serve(app)
    fake.origin = server.origin
    yield fake
    fake.released.set()  # hung calls end before the server stops


ThreadFactory = Callable[..., Awaitable[tuple[GitApi, Path]]]


@pytest.fixture
def claude_thread(git_edge, remote) -> ThreadFactory:
    """``await claude_thread(**settings overrides)`` → (api, worktree) of thread c1/u1/t1."""

    async def start(thread: tuple[str, str, str] = ("c1", "u1", "t1"), **overrides) -> tuple[GitApi, Path]:
        api = await git_edge(**overrides)
        c, u, t = thread
        answer = await api.init(c, u, t, repo_url=remote.url)
        assert answer.status == 200, answer.text
        api.session_id = answer.body["sessionId"]  # type: ignore[attr-defined]
        return api, Path(answer.body["workspacePath"])

    return start


def sse_events(text: str) -> list[tuple[str, dict]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    events = []
    for block in text.split("\n\n"):
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events



STOP_DRAIN = 2


async def sigterm_during_a_hung_call(tmp_path: Path, home: Path, repo_url: str, env: dict, requests: list,
                                     cancel_first: bool) -> None:
    """A real ``python -m edge serve`` whose run hangs in a model call (``requests`` fills when it
    starts), optionally cancelled, then SIGTERM: it must exit within EDGE_DRAIN_SECONDS + 5 s."""
    port = free_port()
    full = {
        "PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "PORT": str(port), "EDGE_HOST": "127.0.0.1",
        "WORKSPACE_PATH": str(tmp_path / "workspace"), "GIT_ALLOW_LOCAL": "1", "EDGE_DRAIN_SECONDS": str(STOP_DRAIN), **env,
    }
    path = tmp_path / "edge.log"
    ids = {"clientId": "c1", "userId": "u1", "threadId": "t1"}
    with open(path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edge", "serve"], cwd=REPO, env=full, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    origin = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def up() -> bool:
                assert proc.poll() is None, path.read_text()
                return await answers(session, origin + "/health")

            await wait_until(up, "the edge's /health", 60, interval=0.1)
            async with session.post(origin + "/api/init", json={**ids, "repoUrl": repo_url}) as resp:
                assert resp.status == 200, await resp.text()
                sid = (await resp.json())["sessionId"]
            running = asyncio.ensure_future(session.post(origin + "/api/execute", json={**ids, "instruction": "anything"}))
            await wait_until(lambda: requests, "the model request", 30, detail=path.read_text)
            if cancel_first:
                async with session.post(origin + f"/api/claude/{sid}/cancel", json={}) as resp:
                    assert (await resp.json())["cancelled"] is True
                answer = await asyncio.wait_for(running, 30)
                assert answer.status == 409
            proc.send_signal(signal.SIGTERM)
            await wait_until(
                lambda: proc.poll() is not None, "the edge to exit within EDGE_DRAIN_SECONDS + 5 s of SIGTERM", STOP_DRAIN + 5
            )
            running.cancel()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "edge stopped" in path.read_text()
