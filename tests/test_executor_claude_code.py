"""The claude-code executor against a fake ``claude`` that speaks the real stream-json protocol."""

from __future__ import annotations

import asyncio
import os

from control.jsonfile import read_json_object, write_json_atomic
from tests.fixtures_claude import process_gone, sse_events, wait_gone
from tests.fixtures_git import TEST_TOKEN, git

PAGE = "src/index.astro"


def body(instruction: str, **extra) -> dict:
    return {"instruction": instruction, "clientId": "c1", "userId": "u1", "threadId": "t1", **extra}


async def start(claude_thread, fake_claude, **overrides):
    return await claude_thread(
        claude_executor="claude-code", claude_cli=str(fake_claude.path), github_token=TEST_TOKEN,
        **overrides,
    )


async def test_runs_claude_code_with_safe_flags_and_an_allowlisted_env(claude_thread, fake_claude, git_home, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TEST_TOKEN)
    monkeypatch.setenv("EDGE_API_TOKEN", "edge-api-secret-token")
    api, worktree = await start(claude_thread, fake_claude, claude_max_turns=7)
    answer = await api.call("POST", "/api/execute", body("make it MARK[blue header]"))
    assert answer.status == 200, answer.text
    assert answer.body["success"] is True and answer.body["mode"] == "claude-code"
    assert answer.body["filesChanged"] == [PAGE] and answer.body["costUsd"] == 0.0123
    assert "<p>blue header</p>" in (worktree / PAGE).read_text()
    assert "Thread-ID: t1" in git(["log", "-1", "--format=%B"], worktree, git_home)

    (call,) = fake_claude.calls()
    argv = call["argv"]
    assert argv[:5] == ["-p", "--output-format", "stream-json", "--verbose", "--permission-mode"]
    assert argv[argv.index("--permission-mode") + 1] == "acceptEdits"
    allowed = argv[argv.index("--allowedTools") + 1].split(",")
    assert set(allowed) == {"Read", "Edit", "MultiEdit", "Glob", "Grep"} and "Write" not in allowed
    assert argv[argv.index("--disallowedTools") + 1] == "Bash"
    assert argv[argv.index("--max-turns") + 1] == "7"
    assert "--resume" not in argv
    assert "MARK[blue header]" in call["prompt"]  # the prompt came on stdin, not as an argument
    assert os.path.realpath(call["cwd"]) == os.path.realpath(worktree)
    env = call["env"]
    assert "GITHUB_TOKEN" not in env and "EDGE_API_TOKEN" not in env
    assert not any(k.startswith("AWS_") for k in env)
    assert TEST_TOKEN not in repr(env)
    assert TEST_TOKEN not in call["prompt"]


async def test_the_next_instruction_resumes_the_agent_session_with_context(claude_thread, fake_claude):
    api, _ = await start(claude_thread, fake_claude)
    first = await api.call("POST", "/api/execute", body("MARK[one]"))
    assert first.status == 200, first.text
    second = await api.call("POST", "/api/execute", body("MARK[two]"))
    assert second.status == 200, second.text
    calls = fake_claude.calls()
    session = first.body["agentSessionId"]
    assert session and calls[1]["argv"][calls[1]["argv"].index("--resume") + 1] == session
    assert "Earlier instructions" in calls[1]["prompt"] and "MARK[one]" in calls[1]["prompt"]


async def test_progress_is_streamed_as_server_sent_events(claude_thread, fake_claude):
    api, _ = await start(claude_thread, fake_claude)
    async with api.session.post(
        api.origin + f"/api/claude/{api.session_id}/execute",
        json={"instruction": "MARK[streamed]", "autoCommit": True},
        headers={"Accept": "text/event-stream"},
    ) as resp:
        assert resp.status == 200
        events = sse_events(await resp.text())
    names = [name for name, _ in events]
    assert names[0] == "started"
    assert {"session", "assistant", "tool", "file_changed", "committed", "done", "result"} <= set(names)
    assert names.index("tool") < names.index("file_changed") < names.index("committed") < names.index("done")
    tool = next(data for name, data in events if name == "tool")
    assert (tool["tool"], tool["file"]) == ("Edit", PAGE)
    hermes = events[-1][1]
    assert names[-1] == "result" and hermes["success"] is True and hermes["filesChanged"] == [PAGE] and hermes["gitCommit"]


async def test_is_error_on_the_result_line_is_a_failure(claude_thread, fake_claude, git_home):
    api, worktree = await start(claude_thread, fake_claude)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    answer = await api.call("POST", "/api/execute", body("MARK[half] then FAIL"))
    assert answer.status == 502 and answer.body["success"] is False
    assert "reported an error" in answer.body["error"]
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before  # nothing committed
    assert answer.body["filesChanged"] == [PAGE]  # and the caller is told what was touched


async def test_a_crash_without_a_result_says_so(claude_thread, fake_claude):
    api, _ = await start(claude_thread, fake_claude)
    answer = await api.call("POST", "/api/execute", body("CRASH"))
    assert answer.status == 502 and "exited with status 3 without a result" in answer.body["error"]
    assert "fake claude crashed" in answer.body["error"]


async def test_a_missing_cli_is_a_clear_error(claude_thread, tmp_path):
    api, _ = await claude_thread(claude_executor="claude-code", claude_cli=str(tmp_path / "no-such-claude"))
    answer = await api.call("POST", "/api/execute", body("MARK[x]"))
    assert answer.status == 502 and "could not start Claude Code" in answer.body["error"]


async def test_timeout_stops_the_whole_process_group(claude_thread, fake_claude, git_home):
    api, worktree = await start(claude_thread, fake_claude, execution_timeout=2)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    answer = await api.call("POST", "/api/execute", body("SLEEP[60]"))
    assert answer.status == 504, answer.text
    assert "timed out" in answer.body["error"] and answer.body["success"] is False
    (call,) = fake_claude.calls()
    assert await wait_gone(call["pid"]) and await wait_gone(call["child"])
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before
    # The thread is free again.
    again = await api.call("POST", "/api/execute", body("MARK[after]"))
    assert again.status == 200, again.text


async def test_busy_thread_409_and_cancel_stops_the_run(claude_thread, fake_claude, git_home):
    api, worktree = await start(claude_thread, fake_claude)
    before = git(["rev-parse", "HEAD"], worktree, git_home)
    running = asyncio.ensure_future(api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "SLEEP[60]"}))
    (call,) = await fake_claude.wait_calls(1)

    busy = await api.call("POST", "/api/execute", body("MARK[second]"))
    assert busy.status == 409 and busy.body["success"] is False and busy.body["startedAt"]
    status = await api.call("GET", f"/api/claude/{api.session_id}/status")
    assert status.body["running"] is True

    cancelled = await api.call("POST", f"/api/claude/{api.session_id}/cancel", {})
    assert cancelled.status == 200 and cancelled.body["cancelled"] is True
    first = await asyncio.wait_for(running, 30)
    assert first.status == 409 and first.body["success"] is False and first.body["cancelled"] is True
    assert process_gone(call["pid"]) and await wait_gone(call["child"])
    assert git(["rev-parse", "HEAD"], worktree, git_home) == before
    assert len(fake_claude.calls()) == 1  # the busy request ran nothing
    nothing = await api.call("POST", f"/api/claude/{api.session_id}/cancel", {})
    assert nothing.status == 200 and nothing.body["cancelled"] is False


async def test_a_client_that_disconnects_does_not_stop_the_run(claude_thread, fake_claude, git_home):
    api, worktree = await start(claude_thread, fake_claude)
    request = asyncio.ensure_future(api.call("POST", "/api/execute", body("SLEEP[1] MARK[kept]")))
    await fake_claude.wait_calls(1)
    request.cancel()
    deadline = asyncio.get_running_loop().time() + 30
    while "kept" not in git(["log", "-1", "--format=%B"], worktree, git_home):
        assert asyncio.get_running_loop().time() < deadline, "the run did not finish after the client left"
        await asyncio.sleep(0.1)
    assert "<p>kept</p>" in (worktree / PAGE).read_text()


async def test_plan_mode_and_approval_with_claude_code(claude_thread, fake_claude, git_home):
    api, worktree = await start(claude_thread, fake_claude)
    planned = await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "MARK[planned]", "planningMode": True})
    assert planned.status == 200 and planned.body["requiresApproval"] is True
    assert "<p>planned</p>" not in (worktree / PAGE).read_text()
    plan_call = fake_claude.calls()[0]["argv"]
    assert plan_call[plan_call.index("--permission-mode") + 1] == "plan"
    assert set(plan_call[plan_call.index("--allowedTools") + 1].split(",")) == {"Read", "Glob", "Grep"}

    approved = await api.call("POST", f"/api/claude/{api.session_id}/execute-approved", {"approvalToken": planned.body["approvalToken"]})
    assert approved.status == 200 and approved.body["gitCommit"]
    run = fake_claude.calls()[1]
    assert run["argv"][run["argv"].index("--permission-mode") + 1] == "acceptEdits"
    assert planned.body["plan"] in run["prompt"]
    assert "<p>planned</p>" in (worktree / PAGE).read_text()


async def test_bedrock_mode_of_claude_code_passes_only_what_it_needs(claude_thread, fake_claude, monkeypatch):
    api, _ = await start(
        claude_thread, fake_claude, claude_use_bedrock=True, aws_region="eu-west-1", claude_model="sonnet-x",
        claude_env=(("AWS_ACCESS_KEY_ID", "AKIAFAKE"), ("AWS_SECRET_ACCESS_KEY", "fake"), ("ANTHROPIC_API_KEY", "sk-no")),
    )
    answer = await api.call("POST", "/api/execute", body("MARK[x]"))
    assert answer.status == 200, answer.text
    env = fake_claude.calls()[0]["env"]
    assert env["CLAUDE_CODE_USE_BEDROCK"] == "1" and env["AWS_REGION"] == "eu-west-1"
    assert env["ANTHROPIC_MODEL"] == "sonnet-x" and env["AWS_ACCESS_KEY_ID"] == "AKIAFAKE"
    assert "ANTHROPIC_API_KEY" not in env and "GITHUB_TOKEN" not in env


async def test_a_session_that_cannot_be_resumed_starts_a_new_one(claude_thread, fake_claude):
    api, worktree = await start(claude_thread, fake_claude)
    path = worktree.parent.parent / ".claude" / "threads" / "t1.json"
    context = read_json_object(path)
    write_json_atomic(path, {**context, "claudeSessionId": "gone-session"})
    answer = await api.call("POST", "/api/execute", body("MARK[fresh]"))
    assert answer.status == 200, answer.text
    first, second = fake_claude.calls()
    assert first["argv"][first["argv"].index("--resume") + 1] == "gone-session"
    assert "--resume" not in second["argv"]
    assert read_json_object(path)["claudeSessionId"] == answer.body["agentSessionId"] != "gone-session"
