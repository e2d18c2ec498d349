"""Hermes at the wire level: its calls exactly as it sends them, against a real edge, git and Astro.

Hermes sends no ``Authorization`` header, names sessions with its own uuid v4,
never calls ``/api/init``, sends its first instruction as ``{"instruction"}``
alone, and approves or rejects plans with an approval token it made itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from control.runs import PLANS_FILE
from edge.proxylog import JsonLines, ProxyLog
from tests.chromium import PUBLIC_HOST
from tests.fixtures_git import git, git_settings
from tests.support.polling import wait_until
from tests.test_init_preview import edge_overrides, served, site_repo  # noqa: F401 (fixtures)

PAGE = "src/pages/index.astro"
PREVIEW_DOMAIN = f"https://{PUBLIC_HOST}"
EXECUTE_FIELDS = {"success", "summary", "filesChanged", "requiresApproval", "plan", "approvalToken", "gitCommit", "changes"}


@dataclass
class Hermes:
    """Hermes' container client: JSON bodies, no Authorization header, its own ids and tokens."""

    origin: str
    client: aiohttp.ClientSession

    async def post(self, path: str, body: dict, **headers: str) -> tuple[int, dict]:
        async with self.client.post(self.origin + path, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=300)) as resp:
            return resp.status, await resp.json(content_type=None)

    async def get(self, path: str) -> tuple[int, dict]:
        async with self.client.get(self.origin + path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def first_instruction(self, instruction: str) -> tuple[int, dict]:
        return await self.post("/api/execute", {"instruction": instruction})

    async def instruction(self, session_id: str, instruction: str, email: str = "owner@example.com") -> tuple[int, dict]:
        planning = any(word in instruction.lower() for word in ("delete", "remove", "rebuild", "migrate"))
        return await self.post(f"/api/claude/{session_id}/execute", {
            "instruction": instruction, "userEmail": email, "sessionId": session_id,
            "capabilities": ["edit", "preview"], "autoCommit": True, "planningMode": planning,
        })

    async def approve(self, session_id: str, token: str) -> tuple[int, dict]:
        return await self.post(f"/api/claude/{session_id}/execute-approved", {"approvalToken": token})

    async def reject(self, session_id: str, token: str) -> tuple[int, dict]:
        return await self.post(f"/api/claude/{session_id}/reject-plan", {"approvalToken": token})


def email_lines(answer: dict) -> list[str]:
    """What Hermes writes into its reply: each change verbatim, as text."""
    return [f"- {change}" for change in answer["changes"]]


@pytest.fixture
async def hermes_edge(edge, settings, git_home, remote):
    """``await hermes_edge(**overrides)`` → (Hermes, app): an edge with the remote as DEFAULT_REPO_URL, no init."""
    clients: list[aiohttp.ClientSession] = []

    async def start(**overrides):
        merged = {"git_allow_local": True, "default_repo_url": remote.url, **overrides}
        server = await edge(**{"child_env": git_settings(settings, git_home).child_env, **merged})
        client = aiohttp.ClientSession()
        clients.append(client)
        return Hermes(server.origin, client), server

    yield start
    for client in clients:
        await client.close()


def worktree_of(settings, thread: str) -> Path:
    return settings.workspace_path / "default" / "default" / "threads" / thread


# -- the loop, without a preview ------------------------------------------------------------


async def test_the_first_instruction_alone_opens_the_default_thread(hermes_edge, settings, git_home):
    hermes, _ = await hermes_edge()
    status, answer = await hermes.first_instruction("Add a welcome line to the home page")
    assert status == 200, answer
    assert EXECUTE_FIELDS <= set(answer) and answer["success"] is True
    assert answer["changes"] == [f"Added: {PAGE}"] and answer["filesChanged"] == [PAGE]
    assert "[object Object]" not in "\n".join(email_lines(answer))
    assert answer["threadId"] == "main" and answer["summary"]
    worktree = worktree_of(settings, "main")
    assert git(["rev-parse", "--abbrev-ref", "HEAD"], worktree, git_home).strip() == "thread-main"
    assert "Add a welcome line" in (worktree / PAGE).read_text()
    assert git(["rev-parse", "--short=7", "HEAD"], worktree, git_home).strip() == answer["gitCommit"]


async def test_without_a_repository_the_first_instruction_is_a_clear_404(hermes_edge):
    hermes, _ = await hermes_edge(default_repo_url=None)
    status, answer = await hermes.first_instruction("Add a welcome line")
    assert status == 404 and answer["success"] is False
    assert "DEFAULT_REPO_URL" in answer["hint"]
    status, answer = await hermes.instruction(str(uuid.uuid4()), "Add a welcome line")
    assert status == 404 and answer["success"] is False


async def test_a_hermes_session_becomes_a_thread_named_by_its_id(hermes_edge, settings, git_home):
    hermes, _ = await hermes_edge()
    assert (await hermes.first_instruction("first change"))[0] == 200
    sid = str(uuid.uuid4())
    status, answer = await hermes.instruction(sid, "make the title green")
    assert status == 200, answer
    assert answer["sessionId"] == sid and answer["threadId"] == sid
    worktree = worktree_of(settings, sid)
    assert git(["rev-parse", "--abbrev-ref", "HEAD"], worktree, git_home).strip() == f"thread-{sid}"
    log = git(["log", "--format=%s"], worktree, git_home)
    assert "Claude: first change" in log  # branched from the default thread: the first email's change is there
    assert "make the title green" in (worktree / PAGE).read_text()
    assert "first change" in (worktree_of(settings, "main") / PAGE).read_text()  # the default thread is untouched

    status, listed = await hermes.get(f"/api/sessions/{sid}")
    assert status == 200 and listed["previewUrl"].endswith(f"/session/{sid}/")


async def test_concurrent_first_calls_for_one_session_make_one_thread(hermes_edge, settings):
    hermes, server = await hermes_edge()
    sid = str(uuid.uuid4())
    answers = await asyncio.gather(*(hermes.instruction(sid, f"change {n}") for n in range(3)))
    statuses = sorted(status for status, _ in answers)
    assert statuses[0] == 200 and set(statuses) <= {200, 409}, answers  # one runs; the others find it busy
    threads = sorted(p.name for p in (settings.workspace_path / "default" / "default" / "threads").iterdir())
    assert threads == [sid]
    from control.sessions import REGISTRY

    assert [s.session_id for s in server.app[REGISTRY].all()] == [sid]


async def test_unknown_sessions_get_a_clear_404_on_every_other_call(hermes_edge):
    hermes, _ = await hermes_edge()
    sid = str(uuid.uuid4())
    for path, body in [("execute-approved", {"approvalToken": str(uuid.uuid4())}),
                       ("reject-plan", {"approvalToken": str(uuid.uuid4())}), ("cancel", {})]:
        status, answer = await hermes.post(f"/api/claude/{sid}/{path}", body)
        assert status == 404 and answer["success"] is False and "Session not found" in answer["error"], (path, answer)
    status, answer = await hermes.get(f"/api/claude/{sid}/status")
    assert status == 404
    status, answer = await hermes.instruction("Not-A-Label", "x")
    assert status == 400 and "sessionId" in answer["error"]


async def test_plans_are_approved_and_rejected_with_hermes_own_tokens(hermes_edge, settings, git_home):
    hermes, _ = await hermes_edge()
    sid = str(uuid.uuid4())
    assert (await hermes.instruction(sid, "add a footer"))[0] == 200
    worktree = worktree_of(settings, sid)

    status, planned = await hermes.instruction(sid, "Delete the footer and restructure the page")
    assert status == 200 and planned["requiresApproval"] is True, planned
    assert isinstance(planned["plan"], str) and planned["plan"]
    before = git(["rev-parse", "HEAD"], worktree, git_home).strip()
    own = str(uuid.uuid4())  # Hermes discards the edge's token and mails links with its own
    status, approved = await hermes.approve(sid, own)
    assert status == 200 and approved["success"] is True, approved
    assert git(["rev-parse", "HEAD"], worktree, git_home).strip() != before
    assert (await hermes.approve(sid, own))[0] == 410  # the token is bound to the plan it ran
    assert (await hermes.approve(sid, planned["approvalToken"]))[0] == 410  # and the plan ran once

    status, second = await hermes.instruction(sid, "remove the contact page")
    assert status == 200 and second["requiresApproval"] is True
    head = git(["rev-parse", "HEAD"], worktree, git_home).strip()
    reject_token = str(uuid.uuid4())
    status, rejected = await hermes.reject(sid, reject_token)
    assert status == 200 and rejected["rejected"] is True
    assert (await hermes.approve(sid, reject_token))[0] == 410  # a rejected plan never runs
    assert (await hermes.approve(sid, str(uuid.uuid4())))[0] == 404  # nothing is pending any more
    assert git(["rev-parse", "HEAD"], worktree, git_home).strip() == head

    # Two plans pending: Hermes' token cannot say which, so 409 lists them; the edge's token still works.
    first = (await hermes.instruction(sid, "delete the blog"))[1]
    second = (await hermes.instruction(sid, "delete the shop"))[1]
    status, answer = await hermes.approve(sid, str(uuid.uuid4()))
    assert status == 409 and len(answer["plans"]) == 2 and "approvalToken" not in json.dumps(answer["plans"])
    status, answer = await hermes.approve(sid, second["approvalToken"])
    assert status == 200 and answer["success"] is True
    assert first["approvalToken"] != second["approvalToken"]


async def test_a_restart_between_a_plan_and_its_approval_loses_nothing(hermes_edge, settings, git_home):
    hermes, server = await hermes_edge()
    sid = str(uuid.uuid4())
    status, planned = await hermes.instruction(sid, "delete the about page")
    assert status == 200 and planned["requiresApproval"] is True
    await server.runner.cleanup()  # the container restarts (the workspace is on EFS)

    saved = (settings.workspace_path / PLANS_FILE).read_text()
    assert planned["approvalToken"] not in saved  # tokens are kept hashed only
    assert (settings.workspace_path / PLANS_FILE).stat().st_mode & 0o077 == 0

    hermes, _ = await hermes_edge()
    status, approved = await hermes.approve(sid, str(uuid.uuid4()))
    assert status == 200 and approved["success"] is True, approved
    assert "delete the about page" in git(["log", "-1", "--format=%s"], worktree_of(settings, sid), git_home)


async def test_a_long_run_answers_in_progress_and_goes_on(hermes_edge, settings, git_home):
    hermes, _ = await hermes_edge(hermes_reply_seconds=0.001)  # far less than a run with git takes
    sid = str(uuid.uuid4())
    status, answer = await hermes.instruction(sid, "add a gallery")
    assert status == 200 and answer["success"] is True and answer["inProgress"] is True, answer
    assert "preview will update" in answer["summary"]
    state: dict = {}

    async def finished() -> bool:
        nonlocal state
        status, state = await hermes.get(f"/api/claude/{sid}/status")
        assert status == 200
        return not state["running"] and "lastResult" in state

    await wait_until(finished, "the run's last result", 30, interval=0.1, detail=lambda: state)
    assert state["lastResult"]["success"] is True and state["lastResult"]["gitCommit"]
    assert "add a gallery" in git(["log", "-1", "--format=%s"], worktree_of(settings, sid), git_home)


# -- auth and the API log ---------------------------------------------------------------------


async def test_callers_inside_trusted_networks_need_no_token_and_others_do(hermes_edge):
    lines: list[str] = []

    class Capture:
        def write(self, text: str) -> None:
            lines.extend(text.splitlines())

        def flush(self) -> None:
            pass

    log = ProxyLog([JsonLines(Capture())])  # type: ignore[arg-type]
    import ipaddress

    hermes, _ = await hermes_edge(
        api_token="s3cret-token", api_trusted_networks=(ipaddress.ip_network("127.0.0.0/8"),), proxy_log=log,
    )
    status, answer = await hermes.first_instruction("hello")  # from 127.0.0.1: inside
    assert status == 200, answer

    # Through a trusted proxy (the ALB) for a client outside the networks: the token is required.
    status, answer = await hermes.post("/api/execute", {"instruction": "hi"}, **{"X-Forwarded-For": "203.0.113.9"})
    assert status == 401 and answer["success"] is False
    status, _ = await hermes.post("/api/execute", {"instruction": "hi"}, **{"X-Forwarded-For": "203.0.113.9",
                                                                          "Authorization": "Bearer s3cret-token"})
    assert status == 200
    async with hermes.client.get(hermes.origin + "/_edge/", headers={"Accept": "application/json"}) as resp:
        assert resp.status == 401  # the operator page is not opened by the network

    sid = str(uuid.uuid4())
    status, _ = await hermes.approve(sid, "t")
    assert status == 404
    await asyncio.sleep(0)  # the log writes once per loop turn
    records = [json.loads(line) for line in lines if '"type":"api"' in line]
    refused = [r for r in records if r["status"] == 401]
    assert refused and refused[0]["caller"] == "203.0.113.9" and refused[0]["method"] == "POST"
    missing = [r for r in records if r["status"] == 404]
    assert missing[0]["session"] == sid and "Session not found" in missing[0]["error"]
    assert all(isinstance(r["durationMs"], int) for r in records)
    assert "s3cret-token" not in "\n".join(lines)


async def test_without_trusted_networks_hermes_is_refused(hermes_edge):
    hermes, _ = await hermes_edge(api_token="s3cret-token")
    status, answer = await hermes.first_instruction("hello")
    assert status == 401 and answer["success"] is False


async def test_preview_urls_use_edge_public_url(hermes_edge):
    hermes, _ = await hermes_edge(public_url="https://edit.client.example.com")
    sid = str(uuid.uuid4())
    assert (await hermes.instruction(sid, "x"))[0] == 200
    status, listed = await hermes.get(f"/api/sessions/{sid}")
    assert listed["previewUrl"] == f"https://edit.client.example.com/session/{sid}/"


# -- DynamoDB, as Hermes' table is made and read ---------------------------------------------------


async def test_the_edge_updates_hermes_items_in_place(hermes_edge, dynamodb, serve):
    async def container_metadata(_: web.Request) -> web.Response:  # ECS task metadata v4: the container's document
        return web.json_response({"DockerId": "abc", "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.1.23"]}]})

    metadata = web.Application()
    metadata.router.add_get("/v4/abc", container_metadata)
    ecs = await serve(metadata)
    sid, email = str(uuid.uuid4()), "owner@example.com"
    await asyncio.to_thread(dynamodb.put_hermes_item, sid, email, "amelia", "thread-1a2b3c4d")
    hermes, _ = await hermes_edge(dynamodb_table=dynamodb.table, dynamodb_heartbeat_seconds=0.2,
                                  public_url=PREVIEW_DOMAIN, ecs_metadata_uri=ecs.url("/v4/abc"))
    status, answer = await hermes.instruction(sid, "make it blue", email=email)
    assert status == 200, answer

    item = await asyncio.to_thread(dynamodb.wait_item, sid, lambda i: (i or {}).get("status") == "active")
    assert item["userId"] == email  # Hermes' item, not a second one
    assert item["hermesOwn"] == "kept" and item["createdAt"] == "2026-12-01T10:00:00.000Z"
    assert item["threadId"] == "thread-1a2b3c4d" and item["clientId"] == "amelia"  # Hermes' values survive
    assert item["editBranch"] == f"thread-{sid}"
    assert item["previewUrl"] == f"{PREVIEW_DOMAIN}/session/{sid}/"
    assert item["containerIp"] == "10.0.1.23"
    assert abs(item["lastActivity"] / 1000 - time.time()) < 120
    assert abs(item["ttl"] - (time.time() + 1800)) < 120

    # Hermes lists active sessions with a Query on StatusIndex and reads every attribute.
    active = await asyncio.to_thread(dynamodb.active, "amelia")
    assert [i["sessionId"] for i in active] == [sid]
    for name in ("sessionId", "userId", "clientId", "threadId", "status", "lastActivity", "ttl", "editBranch", "createdAt"):
        assert active[0].get(name) is not None, name


async def test_sigterm_marks_served_sessions_expired(hermes_edge, dynamodb):
    hermes, server = await hermes_edge(dynamodb_table=dynamodb.table)
    sid = str(uuid.uuid4())
    assert (await hermes.instruction(sid, "x"))[0] == 200
    await asyncio.to_thread(dynamodb.wait_item, sid, lambda i: (i or {}).get("status") == "active")
    await server.runner.cleanup()  # what SIGTERM ends in
    item = await asyncio.to_thread(dynamodb.wait_item, sid, lambda i: (i or {}).get("status") == "expired")
    assert item["userId"] == "owner@example.com"


# -- the whole loop with a real Astro preview -------------------------------------------------------


@pytest.mark.astro
async def test_a_site_owners_whole_loop_as_hermes_runs_it(preview_edge, edge_overrides, site_repo, settings, git_home):  # noqa: F811
    edge = await preview_edge(**edge_overrides, default_repo_url=site_repo, public_url=PREVIEW_DOMAIN)
    hermes = Hermes(edge.server.origin, edge.client)
    sid = str(uuid.uuid4())
    link = f"/session/{sid}/"  # what Hermes emails: https://edit.amelia.webordinary.com/session/<sid>/

    # First email: the instruction alone; then the owner opens the emailed link.
    status, first = await hermes.first_instruction("Say hello to spring visitors")
    assert status == 200 and first["success"] is True, first
    page, headers = await served(edge, link)
    assert "Simulated edit: Say hello to spring visitors" in page

    # A later instruction names the session: it gets its own thread, and the same link shows it.
    status, later = await hermes.instruction(sid, "Add opening hours")
    assert status == 200 and later["success"] is True, later
    page, headers = await served(edge, link)
    assert "Simulated edit: Add opening hours" in page and headers["X-Edge-Session"] == sid

    # A plan, approved with Hermes' own token; another, rejected.
    status, plan = await hermes.instruction(sid, "Remove the old news section")
    assert status == 200 and plan["requiresApproval"] is True
    status, done = await hermes.approve(sid, str(uuid.uuid4()))
    assert status == 200 and done["success"] is True
    page, _ = await served(edge, link)
    assert "Simulated edit: Remove the old news section" in page
    status, plan = await hermes.instruction(sid, "Delete every page")
    assert status == 200 and plan["requiresApproval"] is True
    status, rejected = await hermes.reject(sid, str(uuid.uuid4()))
    assert status == 200 and rejected["rejected"] is True
    page, _ = await served(edge, link)
    assert "Delete every page" not in page
