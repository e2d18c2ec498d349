"""The bedrock executor: real boto3 against a fake Converse server on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

from tests.fixtures_claude import sigterm_during_a_hung_call
from tests.fixtures_git import TEST_TOKEN, git

MODEL = "us.anthropic.claude-test-v1:0"


def body(instruction: str) -> dict:
    return {"instruction": instruction, "clientId": "c1", "userId": "u1", "threadId": "t1"}


async def start(claude_thread, fake_bedrock, **overrides):
    return await claude_thread(
        claude_executor="bedrock", bedrock_endpoint_url=fake_bedrock.origin, bedrock_model_id=MODEL,
        aws_region="us-east-1", github_token=TEST_TOKEN, **overrides,
    )


async def test_a_tool_use_loop_writes_the_file_and_returns_the_tool_result(claude_thread, fake_bedrock, git_home):
    fake_bedrock.reply([{"text": "Writing it."}, fake_bedrock.tool_use("write_file", {"path": "src/header.astro", "content": "<h1 class='blue'>Hi</h1>\n"})], stop="tool_use")
    fake_bedrock.reply([{"text": "The header is blue now."}])
    api, worktree = await start(claude_thread, fake_bedrock)
    answer = await api.call("POST", "/api/execute", body("make the header blue"))
    assert answer.status == 200, answer.text
    assert answer.body["mode"] == "bedrock" and answer.body["success"] is True
    assert answer.body["output"] == "The header is blue now."
    assert answer.body["filesChanged"] == ["src/header.astro"]
    assert (worktree / "src/header.astro").read_text() == "<h1 class='blue'>Hi</h1>\n"
    assert "Thread-ID: t1" in git(["log", "-1", "--format=%B"], worktree, git_home)

    assert len(fake_bedrock.requests) == 2
    assert fake_bedrock.paths[0].startswith("/model/") and fake_bedrock.paths[0].endswith("/converse")
    first, second = fake_bedrock.requests
    assert "make the header blue" in first["messages"][0]["content"][0]["text"]
    assert {t["toolSpec"]["name"] for t in first["toolConfig"]["tools"]} == {"list_files", "read_file", "write_file", "replace_in_file"}
    result = second["messages"][-1]["content"][0]["toolResult"]
    assert result["toolUseId"] == "tooluse_1" and result["status"] == "success"
    assert second["messages"][-1]["role"] == "user" and second["messages"][-2]["role"] == "assistant"
    # No credentials in what the model sees.
    sent = repr(fake_bedrock.requests)
    assert TEST_TOKEN not in sent and "testing" not in sent


async def test_throttling_is_retried_then_succeeds(claude_thread, fake_bedrock):
    fake_bedrock.throttle()
    fake_bedrock.reply([{"text": "Done after a wait."}])
    api, _ = await start(claude_thread, fake_bedrock, bedrock_max_attempts=3)
    answer = await api.call("POST", "/api/execute", body("anything"))
    assert answer.status == 200, answer.text
    assert answer.body["output"] == "Done after a wait."
    assert len(fake_bedrock.requests) == 2


async def test_throttling_beyond_the_attempts_and_other_errors_end_the_run_clearly(claude_thread, fake_bedrock):
    fake_bedrock.throttle()
    fake_bedrock.throttle()
    api, _ = await start(claude_thread, fake_bedrock, bedrock_max_attempts=2)
    answer = await api.call("POST", "/api/execute", body("anything"))
    assert answer.status == 502 and "ThrottlingException" in answer.body["error"]
    assert "throttled" in answer.body["error"] and "HTTP 429" in answer.body["error"]
    assert len(fake_bedrock.requests) == 2  # BEDROCK_MAX_ATTEMPTS counts every call
    fake_bedrock.replies.append((400, {"x-amzn-ErrorType": "ValidationException"}, {"message": "The model id is invalid"}))
    answer = await api.call("POST", "/api/execute", body("anything"))
    assert answer.status == 502 and "ValidationException" in answer.body["error"] and "model id is invalid" in answer.body["error"]


async def test_paths_outside_the_worktree_are_refused_as_tool_errors(claude_thread, fake_bedrock, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    fake_bedrock.reply([
        fake_bedrock.tool_use("write_file", {"path": "../../etc/passwd", "content": "x"}, "u1"),
        fake_bedrock.tool_use("write_file", {"path": str(outside / "abs.txt"), "content": "x"}, "u2"),
        fake_bedrock.tool_use("write_file", {"path": "link/escape.txt", "content": "x"}, "u3"),
        fake_bedrock.tool_use("read_file", {"path": "link/../../outside/secret"}, "u4"),
        fake_bedrock.tool_use("write_file", {"path": ".git/hooks/pre-commit", "content": "x"}, "u5"),
    ], stop="tool_use")
    fake_bedrock.reply([{"text": "I could not."}])
    api, worktree = await start(claude_thread, fake_bedrock)
    os.symlink(outside, worktree / "link")
    passwd = open("/etc/passwd").read()
    answer = await api.call("POST", "/api/execute", body("escape"))
    assert answer.status == 200, answer.text
    results = [block["toolResult"] for block in fake_bedrock.requests[1]["messages"][-1]["content"]]
    assert [r["toolUseId"] for r in results] == ["u1", "u2", "u3", "u4", "u5"]
    assert all(r["status"] == "error" for r in results), results
    assert list(outside.iterdir()) == []
    assert open("/etc/passwd").read() == passwd
    assert not (worktree.parent.parent / "etc").exists()
    assert answer.body["filesChanged"] == []


async def test_a_plan_offers_only_reading_tools(claude_thread, fake_bedrock):
    fake_bedrock.reply([fake_bedrock.tool_use("write_file", {"path": "x.txt", "content": "x"})], stop="tool_use")
    fake_bedrock.reply([{"text": "1. Create x.txt"}])
    api, worktree = await start(claude_thread, fake_bedrock)
    answer = await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "plan it", "planningMode": True})
    assert answer.status == 200, answer.text
    assert answer.body["requiresApproval"] is True and answer.body["plan"] == "1. Create x.txt"
    tools = {t["toolSpec"]["name"] for t in fake_bedrock.requests[0]["toolConfig"]["tools"]}
    assert tools == {"list_files", "read_file"}
    assert fake_bedrock.requests[1]["messages"][-1]["content"][0]["toolResult"]["status"] == "error"
    assert not (worktree / "x.txt").exists()


async def test_access_denied_an_unknown_model_and_missing_credentials_are_named(claude_thread, fake_bedrock, monkeypatch):
    api, _ = await start(claude_thread, fake_bedrock, bedrock_max_attempts=1)
    fake_bedrock.error(403, "AccessDeniedException", "You don't have access to the model with the specified model ID.")
    denied = await api.call("POST", "/api/execute", body("one"))
    assert denied.status == 502 and "access denied" in denied.body["error"] and "AccessDeniedException" in denied.body["error"]
    fake_bedrock.error(404, "ResourceNotFoundException", "Could not resolve the foundation model from the model identifier.")
    missing = await api.call("POST", "/api/execute", body("two"))
    assert missing.status == 502 and "model not found" in missing.body["error"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    calls = len(fake_bedrock.requests)
    nothing = await api.call("POST", "/api/execute", body("three"))
    assert nothing.status == 502 and "no AWS credentials" in nothing.body["error"], nothing.text
    assert len(fake_bedrock.requests) == calls  # nothing unsigned was sent


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancelled", "hung"])
async def test_a_hung_converse_call_does_not_delay_the_exit_after_sigterm(tmp_path, git_home, remote, fake_bedrock, cancel_first):
    """SIGTERM with a Converse call hung on the wire: the edge exits within EDGE_DRAIN_SECONDS + 5 s."""
    fake_bedrock.hang()
    env = {
        "CLAUDE_EXECUTOR": "bedrock", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake_bedrock.origin, "BEDROCK_MODEL_ID": MODEL,
        "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true",
    }
    await sigterm_during_a_hung_call(tmp_path, git_home, remote.url, env, fake_bedrock.requests, cancel_first)
