"""Claude on a thread with the simulation executor: execute, Hermes' endpoints, plans and approval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.jsonfile import read_json_file
from tests.fixtures_claude import sse_events
from tests.fixtures_git import git

HERMES_FIELDS = {"success", "summary", "filesChanged", "requiresApproval", "plan", "approvalToken", "gitCommit", "changes"}
PAGE = "src/pages/index.astro"


def context(worktree: Path, thread: str = "t1") -> dict:
    return read_json_file(worktree.parent.parent / ".claude" / "threads" / f"{thread}.json") or {}


def head(worktree: Path, home: Path) -> str:
    return git(["rev-parse", "HEAD"], worktree, home).strip()


async def test_execute_makes_an_honest_visible_change_and_commits_it(claude_thread, git_home, remote):
    api, worktree = await claude_thread()
    answer = await api.call("POST", "/api/execute", {
        "instruction": "make the header <b>blue</b> & bold", "clientId": "c1", "userId": "u1", "threadId": "t1",
    })
    assert answer.status == 200, answer.text
    body = answer.body
    assert body["success"] is True and body["mode"] == "simulation"
    assert body["filesChanged"] == [PAGE]
    assert isinstance(body["durationMs"], int)
    page = (worktree / PAGE).read_text()
    assert "<p data-webordinary-simulation>Simulated edit: make the header &lt;b&gt;blue&lt;/b&gt; &amp; bold</p>" in page
    message = git(["log", "-1", "--format=%B"], worktree, git_home)
    assert message.startswith("Claude: make the header <b>blue</b> & bold")
    assert "Thread-ID: t1" in message
    assert body["commit"]["commit"] == head(worktree, git_home)
    assert git(["status", "--porcelain"], worktree, git_home) == ""

    # A second instruction replaces the marker (one marker, the newest) and sees the first in its context.
    second = await api.call("POST", "/api/execute", {"instruction": "now green", "clientId": "c1", "userId": "u1", "threadId": "t1"})
    assert second.status == 200, second.text
    page = (worktree / PAGE).read_text()
    assert page.count("data-webordinary-simulation") == 1 and "now green" in page
    history = context(worktree)["instructions"]
    assert [h["instruction"] for h in history] == ["make the header <b>blue</b> & bold", "now green"]
    assert history[0]["commit"] and history[0]["files"] == [PAGE] and history[0]["mode"] == "simulation"
    assert context(worktree)["repoUrl"] == remote.url  # control's own keys are kept


async def test_execute_without_auto_commit_leaves_the_change_uncommitted(claude_thread, git_home):
    api, worktree = await claude_thread()
    before = head(worktree, git_home)
    answer = await api.call("POST", "/api/execute", {"instruction": "x", "threadId": "t1", "clientId": "c1", "userId": "u1", "autoCommit": False})
    assert answer.status == 200 and answer.body["commit"] is None
    assert head(worktree, git_home) == before
    assert "?? src/pages/" in git(["status", "--porcelain"], worktree, git_home)


@pytest.mark.parametrize("body", [
    {},
    {"instruction": ""},
    {"instruction": "   \n"},
    {"instruction": 42},
    {"instruction": "a\0b"},
    {"instruction": "ok", "autoCommit": "yes"},
])
async def test_bad_instructions_are_refused_and_nothing_runs(claude_thread, git_home, body):
    api, worktree = await claude_thread()
    before = head(worktree, git_home)
    answer = await api.call("POST", "/api/execute", {"clientId": "c1", "userId": "u1", "threadId": "t1", **body})
    assert answer.status == 400 and answer.body["success"] is False and answer.body["error"]
    hermes = await api.call("POST", f"/api/claude/{api.session_id}/execute", body)
    assert hermes.status == 400 and hermes.body["success"] is False
    assert head(worktree, git_home) == before and not (worktree / PAGE).exists()
    assert "instructions" not in context(worktree)


async def test_bad_ids_and_unknown_threads(claude_thread):
    api, _ = await claude_thread()
    bad = await api.call("POST", "/api/execute", {"instruction": "x", "threadId": "../etc"})
    assert bad.status == 400
    missing = await api.call("POST", "/api/execute", {"instruction": "x", "clientId": "c1", "userId": "u1", "threadId": "nope"})
    assert missing.status == 404 and missing.body["success"] is False
    assert (await api.call("POST", "/api/claude/..bad/execute", {"instruction": "x"})).status == 400


async def test_hermes_execute_answers_with_the_old_fields(claude_thread, git_home):
    api, worktree = await claude_thread()
    answer = await api.call("POST", f"/api/claude/{api.session_id}/execute", {
        "instruction": "add a welcome line", "userEmail": "owner@example.com",
        "capabilities": ["edit"], "autoCommit": True, "planningMode": False,
    })
    assert answer.status == 200, answer.text
    assert HERMES_FIELDS <= set(answer.body)
    assert answer.body["success"] is True and answer.body["requiresApproval"] is False
    assert answer.body["approvalToken"] is None and answer.body["plan"] is None
    assert head(worktree, git_home).startswith(answer.body["gitCommit"]) and len(answer.body["gitCommit"]) == 7
    assert answer.body["gitCommitFull"] == head(worktree, git_home)
    assert answer.body["filesChanged"] == [PAGE]
    assert answer.body["changes"] == [f"Added: {PAGE}"]  # Hermes prints each as a line of its email
    assert answer.body["fileChanges"] == [{"file": PAGE, "action": "added"}]
    assert "marker paragraph" in answer.body["summary"]  # the simulation says what it did


async def test_an_unknown_session_id_is_a_thread_of_the_default_user(claude_thread):
    api, worktree = await claude_thread(thread=("default", "default", "main"))
    answer = await api.call("POST", "/api/claude/mythread/execute", {"instruction": "hello"})
    assert answer.status == 200, answer.text
    assert answer.body["sessionId"] == "mythread" and answer.body["threadId"] == "mythread"
    own = worktree.parent / "mythread"
    assert (own / PAGE).is_file() and not (worktree / PAGE).exists()


async def test_plan_then_approve_executes_exactly_that_plan_once(claude_thread, git_home):
    api, worktree = await claude_thread()
    before = head(worktree, git_home)
    planned = await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "make it red", "planningMode": True})
    assert planned.status == 200, planned.text
    assert planned.body["requiresApproval"] is True and "make it red" in planned.body["plan"]
    token = planned.body["approvalToken"]
    assert isinstance(token, str) and len(token) >= 24
    assert planned.body["filesChanged"] == [] and not (worktree / PAGE).exists() and head(worktree, git_home) == before

    approved = await api.call("POST", f"/api/claude/{api.session_id}/execute-approved", {"approvalToken": token})
    assert approved.status == 200, approved.text
    assert approved.body["success"] is True and approved.body["filesChanged"] == [PAGE]
    assert "make it red" in (worktree / PAGE).read_text()
    assert approved.body["gitCommitFull"] == head(worktree, git_home) != before

    again = await api.call("POST", f"/api/claude/{api.session_id}/execute-approved", {"approvalToken": token})
    assert again.status == 410 and again.body["success"] is False and "already approved" in again.body["error"]


async def test_destructive_instructions_get_a_plan_first(claude_thread):
    api, worktree = await claude_thread()
    answer = await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "Delete the footer"})
    assert answer.status == 200 and answer.body["requiresApproval"] is True and answer.body["approvalToken"]
    assert not (worktree / PAGE).exists()


async def test_reject_discards_the_plan_and_changes_nothing(claude_thread, git_home):
    api, worktree = await claude_thread()
    before = head(worktree, git_home)
    token = (await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "x", "planningMode": True})).body["approvalToken"]
    rejected = await api.call("POST", f"/api/claude/{api.session_id}/reject-plan", {"approvalToken": token})
    assert rejected.status == 200 and rejected.body["rejected"] is True
    late = await api.call("POST", f"/api/claude/{api.session_id}/execute-approved", {"approvalToken": token})
    assert late.status == 410
    assert head(worktree, git_home) == before and not (worktree / PAGE).exists()


async def test_unknown_and_expired_tokens(claude_thread):
    api, worktree = await claude_thread(plan_ttl_seconds=0)
    unknown = await api.call("POST", f"/api/claude/{api.session_id}/execute-approved", {"approvalToken": "not-a-token"})
    assert unknown.status == 404 and unknown.body["success"] is False
    missing = await api.call("POST", f"/api/claude/{api.session_id}/execute-approved", {})
    assert missing.status == 400
    token = (await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "x", "planningMode": True})).body["approvalToken"]
    expired = await api.call("POST", f"/api/claude/{api.session_id}/execute-approved", {"approvalToken": token})
    assert expired.status == 410 and "expired" in expired.body["error"]
    assert not (worktree / PAGE).exists()


async def test_a_token_only_works_on_its_own_thread(claude_thread, remote):
    api, worktree = await claude_thread()
    other = await api.init("c1", "u1", "t2", repo_url=remote.url)
    token = (await api.call("POST", f"/api/claude/{api.session_id}/execute", {"instruction": "x", "planningMode": True})).body["approvalToken"]
    answer = await api.call("POST", f"/api/claude/{other.body['sessionId']}/execute-approved", {"approvalToken": token})
    assert answer.status == 404


async def test_execute_streams_progress_events(claude_thread):
    api, worktree = await claude_thread()
    async with api.session.post(
        api.origin + "/api/execute",
        json={"instruction": "stream it", "clientId": "c1", "userId": "u1", "threadId": "t1"},
        headers={"Accept": "text/event-stream"},
    ) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        text = await resp.text()
    events = sse_events(text)
    names = [name for name, _ in events]
    assert names[0] == "started" and names[-1] == "done"
    assert ("tool", PAGE) in [(n, d.get("file")) for n, d in events]
    assert "committed" in names
    assert events[-1][1]["result"]["filesChanged"] == [PAGE]
    assert json.loads(json.dumps(events[-1][1]))["result"]["success"] is True


async def test_runs_are_counted_in_the_metrics(claude_thread):
    from prometheus_client.parser import text_string_to_metric_families

    api, _ = await claude_thread()
    answer = await api.call("POST", "/api/execute", {"instruction": "x", "clientId": "c1", "userId": "u1", "threadId": "t1"})
    assert answer.status == 200, answer.text
    page = await api.call("GET", "/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page.text)
        for s in family.samples
    }
    assert samples[("edge_executions_total", (("mode", "simulation"), ("outcome", "ok")))] == 1
    assert samples[("edge_execution_duration_seconds_count", (("mode", "simulation"),))] == 1
