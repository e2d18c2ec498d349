"""The claude-code executor: the real Claude Code CLI (pinned, from npm) against a fake Bedrock endpoint.

The fake endpoint (``tests/fake_bedrock_stream.py``) plays the model: scripted turns that
call the CLI's own tools, so what happens to files is what the CLI itself does. A fake
``claude`` (``tests/fake_claude.py``) is used only where the real one cannot show a case:
a crash without a result line, a grandchild process, the exact environment it was given.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest

from core.jsonfile import read_json_file, write_json_atomic
from tests.fixtures_claude import agent_pids, process_gone, sigterm_during_a_hung_call, sse_events, wait_gone
from tests.fixtures_git import TEST_TOKEN, git
from tests.support.polling import wait_until

PAGE = "src/index.astro"
EDIT_TOOLS = ["Edit", "Glob", "Grep", "Read", "Write"]  # exactly what the model is offered
PLAN_TOOLS = ["Glob", "Grep", "Read"]


def body(instruction: str, **extra) -> dict:
    return {"instruction": instruction, "clientId": "c1", "userId": "u1", "threadId": "t1", **extra}


async def start_real(claude_thread, edge_claude_env, **env):
    return await claude_thread(github_token=TEST_TOKEN, **edge_claude_env(**env))


def script_edit(model, worktree, old: str, new: str) -> None:
    """The model reads the page, edits it, and says it is done (Edit needs a Read first)."""
    page = str(worktree / PAGE)
    model.say(model.text("I'll read the page."), model.tool("Read", file_path=page))
    model.say(model.tool("Edit", file_path=page, old_string=old, new_string=new))
    model.say(model.text("Done: the heading was changed."))


async def test_an_edit_by_the_real_cli_is_committed_and_only_the_allowed_tools_are_offered(
    claude_thread, edge_claude_env, bedrock_model, git_home
):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    script_edit(bedrock_model, worktree, "<h1>Hello</h1>", "<h1>Blue header</h1>")
    answer = await api.call("POST", "/api/execute", body("make the header blue"))
    assert answer.status == 200, answer.text
    assert answer.body["success"] is True and answer.body["mode"] == "claude-code"
    assert answer.body["filesChanged"] == [PAGE] and answer.body["commit"]["committed"] is True
    assert "<h1>Blue header</h1>" in (worktree / PAGE).read_text()
    assert "Thread-ID: t1" in git(["log", "-1", "--format=%B"], worktree, git_home)
    # What the CLI offered the model, in every request: the file tools and nothing else
    # (no Bash, WebFetch, WebSearch, Agent/Task, scheduling, MCP, Skill).
    assert len(bedrock_model.requests) == 3
    assert all(bedrock_model.tools_offered(i) == EDIT_TOOLS for i in range(3))
    assert bedrock_model.paths[-1] == "/model/fake-sonnet/invoke-with-response-stream"
    assert "make the header blue" in str(bedrock_model.requests[0]["messages"])
    # The CLI's HOME (its sessions) is in the user's workspace folder, not the worktree.
    sessions = list((worktree.parent.parent / ".claude" / "home" / ".claude" / "projects").rglob("*.jsonl"))
    assert [path.stem for path in sessions] == [answer.body["agentSessionId"]]
    assert not (worktree / ".claude").exists()


async def test_writes_outside_the_worktree_never_happen(claude_thread, edge_claude_env, bedrock_model, tmp_path):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    home = worktree.parent.parent / ".claude" / "home"
    targets = [tmp_path / "outside.txt", home / ".claude" / "settings.json", worktree.parent / "next-door.txt"]
    for target in targets:
        bedrock_model.say(bedrock_model.tool("Write", file_path=str(target), content="pwned"))
    bedrock_model.say(bedrock_model.tool("Write", file_path=str(worktree / ".claude" / "settings.json"), content="{}"))
    bedrock_model.say(bedrock_model.tool("Read", file_path="/etc/hostname"))
    bedrock_model.say(bedrock_model.text("I tried."))
    answer = await api.call("POST", "/api/execute", body("write everywhere"))
    assert answer.status == 200, answer.text
    assert answer.body["filesChanged"] == []
    for target in targets:
        assert not target.exists(), target
    assert not (worktree / ".claude" / "settings.json").exists()
    results = bedrock_model.tool_results()
    assert len(results) == 5 and all(result.get("is_error") is True for result in results)


async def test_the_sites_repository_cannot_add_hooks_mcp_servers_skills_or_permissions(
    claude_thread, edge_claude_env, bedrock_model, remote, tmp_path
):
    marker = tmp_path / "ran"
    touch = f"touch {marker}"
    remote.commit("main", {
        ".claude/settings.json": json.dumps({
            "permissions": {"allow": [f"Write({tmp_path}/**)"], "defaultMode": "bypassPermissions"},
            "hooks": {"SessionStart": [{"hooks": [{"type": "command", "command": touch}]}],
                      "PreToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": touch}]}]},
            "env": {"CLAUDE_CODE_MAX_RETRIES": "50"},
        }),
        ".mcp.json": json.dumps({"mcpServers": {"site": {"command": "sh", "args": ["-c", touch]}}}),
        ".claude/skills/deploy/SKILL.md": "---\nname: deploy\ndescription: Deploys the site.\n---\nRun the deploy.\n",
    })
    api, worktree = await start_real(claude_thread, edge_claude_env)
    bedrock_model.say(bedrock_model.tool("Write", file_path=str(tmp_path / "allowed-by-the-repo.txt"), content="x"))
    bedrock_model.say(bedrock_model.text("Done."))
    answer = await api.call("POST", "/api/execute", body("anything"))
    assert answer.status == 200, answer.text
    assert bedrock_model.tools_offered(0) == EDIT_TOOLS  # no mcp__site__*, no Skill
    assert "deploy" not in json.dumps(bedrock_model.requests[0])
    assert not (tmp_path / "allowed-by-the-repo.txt").exists()
    assert not marker.exists()  # no hook, no MCP server ran


async def test_plan_mode_offers_only_reading_tools_and_cannot_write(claude_thread, edge_claude_env, bedrock_model, git_home):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    bedrock_model.say(bedrock_model.tool("Write", file_path=str(worktree / PAGE), content="gone"))
    bedrock_model.say(bedrock_model.tool("Edit", file_path=str(worktree / PAGE), old_string="Hello", new_string="Bye"))
    bedrock_model.say(bedrock_model.text("Plan: 1. Change the heading in src/index.astro."))
    planned = await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "change the heading", "planningMode": True})
    assert planned.status == 200, planned.text
    assert planned.body["requiresApproval"] is True and "Change the heading" in planned.body["plan"]
    assert all(bedrock_model.tools_offered(i) == PLAN_TOOLS for i in range(len(bedrock_model.requests)))
    assert (worktree / PAGE).read_text() == "<h1>Hello</h1>\n"
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before
    assert all(result.get("is_error") is True for result in bedrock_model.tool_results())


async def test_the_next_instruction_resumes_the_agent_session(claude_thread, edge_claude_env, bedrock_model):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    bedrock_model.say(bedrock_model.text("Noted: the first instruction."))
    first = await api.call("POST", "/api/execute", body("remember the word PELICAN"))
    assert first.status == 200, first.text
    bedrock_model.say(bedrock_model.text("The word was PELICAN."))
    second = await api.call("POST", "/api/execute", body("which word?"))
    assert second.status == 200, second.text
    assert second.body["agentSessionId"] == first.body["agentSessionId"]
    # The CLI sent the earlier conversation again: it resumed its own session.
    resumed = str(bedrock_model.requests[-1]["messages"])
    assert "remember the word PELICAN" in resumed and "Noted: the first instruction." in resumed


async def test_a_session_that_cannot_be_resumed_starts_a_new_one(claude_thread, edge_claude_env, bedrock_model):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    path = worktree.parent.parent / ".claude" / "threads" / "t1.json"
    gone = str(uuid.uuid4())
    write_json_atomic(path, {**(read_json_file(path) or {}), "claudeSessionId": gone})
    bedrock_model.say(bedrock_model.text("Fresh start."))
    answer = await api.call("POST", "/api/execute", body("hello again"))
    assert answer.status == 200, answer.text
    assert read_json_file(path)["claudeSessionId"] == answer.body["agentSessionId"] != gone


async def test_progress_is_streamed_as_server_sent_events(claude_thread, edge_claude_env, bedrock_model):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    script_edit(bedrock_model, worktree, "<h1>Hello</h1>", "<h1>Streamed</h1>")
    async with api.session.post(
        api.origin + f"/api/claude/{api.session_id}/execute",
        json={"instruction": "stream it", "autoCommit": True},
        headers={"Accept": "text/event-stream"},
    ) as resp:
        assert resp.status == 200
        events = sse_events(await resp.text())
    names = [name for name, _ in events]
    assert names[0] == "started"
    assert {"session", "assistant", "tool", "file_changed", "committed", "done", "result"} <= set(names)
    assert names.index("file_changed") < names.index("committed") < names.index("done")
    tools = [(data["tool"], data["file"]) for name, data in events if name == "tool"]
    assert tools == [("Read", PAGE), ("Edit", PAGE)]
    assert events[-1][1]["success"] is True and events[-1][1]["filesChanged"] == [PAGE]


THROTTLED = (429, "ThrottlingException", "Too many requests, please wait before trying again.")


async def test_throttling_is_reported_with_its_cause(claude_thread, edge_claude_env, bedrock_model, git_home):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    bedrock_model.error(*THROTTLED, times=5)
    answer = await api.call("POST", "/api/execute", body("make it blue"))
    assert answer.status == 502 and answer.body["success"] is False, answer.text
    error = answer.body["error"]
    assert "throttled" in error and "HTTP 429" in error and "Too many requests" in error
    assert "(success)" not in error
    # CLAUDE_CODE_MAX_RETRIES=1 from the edge's environment: one call and one retry.
    assert len(bedrock_model.requests) == 2
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before
    # A stream shows the retry as it happens.
    bedrock_model.error(*THROTTLED, times=5)
    async with api.session.post(
        api.origin + f"/api/claude/{api.session_id}/execute", json={"instruction": "again"}, headers={"Accept": "text/event-stream"},
    ) as resp:
        events = sse_events(await resp.text())
    retries = [data for name, data in events if name == "retry"]
    assert [(r["attempt"], r["status"], r["error"]) for r in retries] == [(1, 429, "rate_limit")]


async def test_access_denied_and_an_unknown_model_are_named(claude_thread, edge_claude_env, bedrock_model):
    api, _ = await start_real(claude_thread, edge_claude_env)
    bedrock_model.error(403, "AccessDeniedException", "You don't have access to the model with the specified model ID.")
    denied = await api.call("POST", "/api/execute", body("one"))
    assert denied.status == 502 and "access denied" in denied.body["error"] and "HTTP 403" in denied.body["error"]
    bedrock_model.error(404, "ResourceNotFoundException", "Could not resolve the foundation model.")
    missing = await api.call("POST", "/api/execute", body("two"))
    assert missing.status == 502 and "model not found" in missing.body["error"] and "HTTP 404" in missing.body["error"]


async def test_missing_aws_credentials_are_named(claude_thread, edge_claude_env, bedrock_model, monkeypatch):
    # The test process's own AWS settings never reach the CLI; it gets only what the edge passes.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHETESTPROCESS")
    api, _ = await start_real(claude_thread, edge_claude_env, CLAUDE_CODE_SKIP_BEDROCK_AUTH=None, AWS_EC2_METADATA_DISABLED="true")
    answer = await api.call("POST", "/api/execute", body("hello"))
    assert answer.status == 502, answer.text
    assert "no AWS credentials" in answer.body["error"]
    assert bedrock_model.requests == []  # nothing unsigned was sent


async def test_cancel_stops_the_cli_and_leaves_no_process(claude_thread, edge_claude_env, bedrock_model, git_home):
    api, worktree = await start_real(claude_thread, edge_claude_env)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    bedrock_model.hang()
    running = asyncio.ensure_future(api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "take your time"}))
    await wait_until(lambda: bedrock_model.requests, "the CLI to call the model", 30)
    pids = agent_pids(worktree)
    assert pids, "no agent process runs in the worktree"

    busy = await api.call("POST", "/api/execute", body("another"))
    assert busy.status == 409 and busy.body["success"] is False
    cancelled = await api.call("POST", f"/api/claude/{api.session_id}/cancel", {})
    assert cancelled.status == 200 and cancelled.body["cancelled"] is True
    first = await asyncio.wait_for(running, 30)
    assert first.status == 409 and first.body["cancelled"] is True
    for pid in pids:
        await wait_gone(pid)
    assert agent_pids(worktree) == []
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancelled", "hung"])
async def test_a_hung_model_call_does_not_delay_the_exit_after_sigterm(tmp_path, git_home, remote, claude_cli, bedrock_model, cancel_first):
    bedrock_model.hang()
    env = {
        "CLAUDE_EXECUTOR": "claude-code", "CLAUDE_CLI": claude_cli, "CLAUDE_CODE_USE_BEDROCK": "1",
        "ANTHROPIC_BEDROCK_BASE_URL": bedrock_model.origin, "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1", "AWS_REGION": "us-east-1",
        "CLAUDE_MODEL": "fake-sonnet",
    }
    await sigterm_during_a_hung_call(tmp_path, git_home, remote.url, env, bedrock_model.requests, cancel_first)
    assert agent_pids(tmp_path / "workspace" / "c1" / "u1" / "threads" / "t1") == []


# The fake CLI: what the real one cannot show ---------------------------------------------


async def start_fake(claude_thread, fake_claude, **overrides):
    return await claude_thread(claude_executor="claude-code", claude_cli=str(fake_claude.path), github_token=TEST_TOKEN, **overrides)


async def test_the_cli_gets_restricting_flags_and_an_allowlisted_env(claude_thread, fake_claude, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("EDGE_API_TOKEN", "edge-api-secret-token")
    api, worktree = await start_fake(claude_thread, fake_claude, claude_max_turns=7)
    answer = await api.call("POST", "/api/execute", body("make it MARK[blue header]"))
    assert answer.status == 200, answer.text
    (call,) = fake_claude.calls()
    argv = call["argv"]
    assert argv[:5] == ["-p", "--output-format", "stream-json", "--verbose", "--permission-mode"]
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"
    assert argv[argv.index("--tools") + 1] == "Read,Glob,Grep,Edit,Write"
    assert {"--restricted", "--strict-mcp-config", "--disable-slash-commands"} <= set(argv)
    assert argv[argv.index("--permission-prompts") + 1] == "none"
    assert argv[argv.index("--max-turns") + 1] == "7"
    assert "--resume" not in argv and "--allowedTools" not in argv
    assert "MARK[blue header]" in call["prompt"]  # the prompt came on stdin, not as an argument
    assert os.path.realpath(call["cwd"]) == os.path.realpath(worktree)
    env = call["env"]
    assert "GITHUB_TOKEN" not in env and "EDGE_API_TOKEN" not in env and TEST_TOKEN not in repr(env)
    assert not any(k.startswith("AWS_") for k in env)
    assert env["HOME"] == str(worktree.parent.parent / ".claude" / "home")
    assert env["DISABLE_AUTOUPDATER"] == env["DISABLE_TELEMETRY"] == env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "3"


async def test_bedrock_mode_passes_what_the_cli_documents_and_nothing_secret(claude_thread, fake_claude, edge_claude_env):
    overrides = edge_claude_env(
        CLAUDE_CLI=str(fake_claude.path), AWS_ACCESS_KEY_ID="AKIAFAKE", AWS_SECRET_ACCESS_KEY="fake", AWS_PROFILE="site",
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="/v2/credentials/x", AWS_CONTAINER_AUTHORIZATION_TOKEN="ecs-token",
        ANTHROPIC_API_KEY="sk-no", GITHUB_TOKEN=TEST_TOKEN, EDGE_API_TOKEN="edge-api-secret-token",
        CLAUDE_CODE_MAX_RETRIES="2", CLAUDE_ALLOW_SHELL="1",
    )
    api, _ = await claude_thread(**overrides)
    answer = await api.call("POST", "/api/execute", body("MARK[x]"))
    assert answer.status == 200, answer.text
    call = fake_claude.calls()[0]
    env = call["env"]
    assert env["CLAUDE_CODE_USE_BEDROCK"] == "1" and env["CLAUDE_CODE_SKIP_BEDROCK_AUTH"] == "1"
    assert env["ANTHROPIC_BEDROCK_BASE_URL"].startswith("http://127.0.0.1:")
    assert env["ANTHROPIC_MODEL"] == env["ANTHROPIC_SMALL_FAST_MODEL"] == "fake-sonnet"
    assert env["AWS_REGION"] == "us-east-1" and env["AWS_PROFILE"] == "site" and env["AWS_ACCESS_KEY_ID"] == "AKIAFAKE"
    assert env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"] == "/v2/credentials/x" and env["AWS_CONTAINER_AUTHORIZATION_TOKEN"] == "ecs-token"
    assert env["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert "ANTHROPIC_API_KEY" not in env and "GITHUB_TOKEN" not in env and "EDGE_API_TOKEN" not in env
    argv = call["argv"]
    assert argv[argv.index("--tools") + 1] == "Read,Glob,Grep,Edit,Write,Bash"
    assert argv[argv.index("--allowedTools") + 1] == "Bash"


async def test_is_error_on_the_result_line_is_a_failure(claude_thread, fake_claude, git_home):
    api, worktree = await start_fake(claude_thread, fake_claude)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    answer = await api.call("POST", "/api/execute", body("MARK[half] then FAIL"))
    assert answer.status == 502 and answer.body["success"] is False
    assert "reported an error" in answer.body["error"]
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before  # nothing committed
    assert answer.body["filesChanged"] == [PAGE]  # and the caller is told what was touched


async def test_a_crash_without_a_result_says_so(claude_thread, fake_claude):
    api, _ = await start_fake(claude_thread, fake_claude)
    answer = await api.call("POST", "/api/execute", body("CRASH"))
    assert answer.status == 502 and "exited with status 3 without a result" in answer.body["error"]
    assert "fake claude crashed" in answer.body["error"]


async def test_a_missing_cli_is_a_clear_error(claude_thread, tmp_path):
    api, _ = await claude_thread(claude_executor="claude-code", claude_cli=str(tmp_path / "no-such-claude"))
    answer = await api.call("POST", "/api/execute", body("MARK[x]"))
    assert answer.status == 502 and "could not start Claude Code" in answer.body["error"]


async def test_timeout_stops_the_whole_process_group(claude_thread, fake_claude, git_home):
    api, worktree = await start_fake(claude_thread, fake_claude, execution_timeout=2)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    answer = await api.call("POST", "/api/execute", body("SLEEP[60]"))
    assert answer.status == 504, answer.text
    assert "timed out" in answer.body["error"] and answer.body["success"] is False
    (call,) = fake_claude.calls()
    await wait_gone(call["pid"])
    await wait_gone(call["child"])
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before
    again = await api.call("POST", "/api/execute", body("MARK[after]"))
    assert again.status == 200, again.text


async def test_cancel_ends_a_grandchild_too(claude_thread, fake_claude):
    api, _ = await start_fake(claude_thread, fake_claude)
    running = asyncio.ensure_future(api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "SLEEP[60]"}))
    (call,) = await fake_claude.wait_calls(1)
    cancelled = await api.call("POST", f"/api/claude/{api.session_id}/cancel", {})
    assert cancelled.body["cancelled"] is True
    first = await asyncio.wait_for(running, 30)
    assert first.status == 409 and first.body["cancelled"] is True
    assert process_gone(call["pid"])
    await wait_gone(call["child"])
    nothing = await api.call("POST", f"/api/claude/{api.session_id}/cancel", {})
    assert nothing.status == 200 and nothing.body["cancelled"] is False


async def test_a_client_that_disconnects_does_not_stop_the_run(claude_thread, fake_claude, git_home):
    api, worktree = await start_fake(claude_thread, fake_claude)
    request = asyncio.ensure_future(api.call("POST", "/api/execute", body("SLEEP[1] MARK[kept]")))
    await fake_claude.wait_calls(1)
    request.cancel()
    await wait_until(
        lambda: "kept" in git(["log", "-1", "--format=%B"], worktree, git_home), "the run to finish after the client left", 30
    )
    assert "<p>kept</p>" in (worktree / PAGE).read_text()
