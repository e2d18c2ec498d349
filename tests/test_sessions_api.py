"""The session table: /api/sessions, /api/status, DELETE, and what survives a restart of the edge."""

from __future__ import annotations

import json
import time

import aiohttp

from control.sessions import REGISTRY
from core.ids import ThreadRef
from edge import keys
from edge.tracking import TRACKER
from preview.appkeys import PREVIEWS
from tests.conftest import RunningServer
from tests.fixtures_git import GitApi, git, git_settings, make_remote


async def _two_sessions(api, remote, tmp_path, git_home):
    other = make_remote(tmp_path / "remotes", git_home, "other.git")
    first = await api.init("c1", "u1", "t1", repo_url=remote.url)
    second = await api.init("c2", "u9", "t2", repo_url=other.url)
    assert first.status == 200 and second.status == 200, (first.text, second.text)
    return first.body["sessionId"], second.body["sessionId"]


async def test_sessions_are_listed_and_filtered(git_edge, remote, tmp_path, git_home):
    api = await git_edge()
    before = time.time()
    s1, s2 = await _two_sessions(api, remote, tmp_path, git_home)

    listed = await api.call("GET", "/api/sessions")
    assert listed.status == 200 and listed.body["success"] is True
    by_id = {s["sessionId"]: s for s in listed.body["sessions"]}
    assert set(by_id) == {s1, s2}
    one = by_id[s1]
    assert (one["clientId"], one["userId"], one["threadId"], one["branch"]) == ("c1", "u1", "t1", "thread-t1")
    assert one["status"] == "ready"
    assert one["previewUrl"] == f"{api.origin}/session/{s1}/"
    assert one["preview"]["state"] == "stopped"
    assert one["lastActivityEpoch"] >= before - 1

    only_c2 = await api.call("GET", "/api/sessions?clientId=c2")
    assert [s["sessionId"] for s in only_c2.body["sessions"]] == [s2]

    # inactiveSince: sessions whose last activity is older than the moment given.
    future = await api.call("GET", f"/api/sessions?inactiveSince={time.time() + 3600:.0f}")
    assert {s["sessionId"] for s in future.body["sessions"]} == {s1, s2}
    past = await api.call("GET", "/api/sessions?inactiveSince=2001-01-01T00:00:00Z")
    assert past.body["sessions"] == []
    iso_future = await api.call("GET", "/api/sessions?inactiveSince=2999-01-01T00:00:00")
    assert iso_future.body["count"] == 2

    for bad in ("inactiveSince=yesterday", "inactiveSince=nan", "clientId=..%2Fx", "clientId=-x"):
        answer = await api.call("GET", f"/api/sessions?{bad}")
        assert answer.status == 400 and answer.body["success"] is False and answer.body["error"], bad


async def test_thread_status_has_workspace_git_and_preview(git_edge, remote, settings):
    api = await git_edge()
    init = await api.init(repo_url=remote.url)
    sid = init.body["sessionId"]
    worktree = settings.workspace_path / "c1" / "u1" / "threads" / "t1"
    (worktree / "new.txt").write_text("draft\n")

    status = await api.call("GET", "/api/status/c1/u1/t1")
    assert status.status == 200, status.text
    body = status.body
    assert body["success"] is True and body["sessionId"] == sid and body["status"] == "ready"
    assert body["workspace"] == {"path": str(worktree), "branch": "thread-t1"}
    assert body["git"]["branch"] == "thread-t1" and body["git"]["clean"] is False
    assert body["preview"]["state"] == "stopped" and body["preview"]["url"] == f"/session/{sid}/"

    missing = await api.call("GET", "/api/status/c1/u1/nope")
    assert missing.status == 404 and missing.body["success"] is False
    bad = await api.call("GET", "/api/status/c1/u1/-bad")
    assert bad.status == 400 and bad.body["success"] is False


async def test_delete_forgets_the_session_and_purge_removes_only_the_worktree(git_edge, remote, tmp_path, git_home, settings):
    api = await git_edge()
    s1, s2 = await _two_sessions(api, remote, tmp_path, git_home)
    table = api.app[keys.SESSIONS]
    routed = await api.call("POST", f"/api/routes/{s1}", {"target": "http://127.0.0.1:9"})
    assert routed.status == 201

    assert (await api.call("DELETE", "/api/sessions/-bad")).status == 400
    unknown = await api.call("DELETE", "/api/sessions/nothing-here-0123456789")
    assert unknown.status == 404 and unknown.body["success"] is False
    assert (await api.call("DELETE", f"/api/sessions/{s2}?purge=maybe")).status == 400
    assert api.app[REGISTRY].get(s2) is not None  # a refused request changes nothing

    gone = await api.call("DELETE", f"/api/sessions/{s1}")
    assert gone.status == 200 and gone.body == {"success": True, "sessionId": s1, "previewStopped": False, "purged": False}
    assert table.get(s1) is None
    assert api.app[REGISTRY].get(s1) is None
    assert (settings.workspace_path / "c1" / "u1" / "threads" / "t1" / ".git").is_file()  # the worktree stays
    assert (await api.call("GET", f"/api/sessions/{s1}")).status == 404
    page = await api.call("GET", f"/session/{s1}/")
    assert page.status == 404  # no route, no registry entry: no preview on demand

    purged = await api.call("DELETE", f"/api/sessions/{s2}?purge=1")
    assert purged.status == 200 and purged.body["purged"] is True
    project = settings.workspace_path / "c2" / "u9" / "project"
    assert not (settings.workspace_path / "c2" / "u9" / "threads" / "t2").exists()
    assert git(["branch", "--list", "thread-t2"], project, git_home).strip() == "thread-t2"  # the branch stays
    assert "threads/t2" not in git(["worktree", "list"], project, git_home)
    assert (await api.call("GET", "/api/sessions")).body["sessions"] == []
    saved = json.loads((settings.workspace_path / ".edge" / "sessions.json").read_text())
    assert saved["sessions"] == {}

    again = await api.init("c2", "u9", "t2")  # the thread can be resumed from its branch
    assert again.status == 200 and again.body["resumed"] is True


async def test_sessions_survive_a_restart_and_previews_start_on_demand(edge, remote, tmp_path, git_home, settings):
    api, server = await _start(edge, settings, git_home)
    s1, s2 = await _two_sessions(api, remote, tmp_path, git_home)
    used = time.time()
    assert (await api.call("GET", "/api/git/status/c1/u1/t1")).status == 200  # API activity on s1
    await api.session.close()
    await server.runner.cleanup()  # as on SIGTERM

    saved = json.loads((settings.workspace_path / ".edge" / "sessions.json").read_text())["sessions"]
    assert set(saved) == {s1, s2}
    assert saved[s1]["lastActivity"] >= used - 1  # written at shutdown, not per request
    assert saved[s1]["status"] == "ready"

    api2, _ = await _start(edge, settings, git_home)
    listed = await api2.call("GET", "/api/sessions")
    assert {s["sessionId"] for s in listed.body["sessions"]} == {s1, s2}
    assert all(s["status"] == "ready" and s["previewUrl"] for s in listed.body["sessions"])

    # The route comes back on the first request: the registered session's preview is started.
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{api2.origin}/session/{s2}/", headers={"Accept": "text/html"}) as page:
            assert page.status != 404
    await api2.session.close()
    assert api2.app[PREVIEWS].get(s2) is not None


async def test_api_calls_naming_a_thread_count_as_its_activity(git_edge, remote):
    api = await git_edge()
    init = await api.init(repo_url=remote.url)
    sid = init.body["sessionId"]
    tracker = api.app[TRACKER]
    entry = tracker.registry.get(sid)
    first = tracker.last_activity(entry)
    while time.time() <= first + 0.05:
        time.sleep(0.01)
    assert (await api.call("GET", "/api/git/status/c1/u1/t1")).status == 200
    assert tracker.last_activity(tracker.registry.get(sid)) > first
    assert (await api.call("GET", "/health")).status == 200
    assert tracker.registry.session_id_of(ThreadRef("c1", "u1", "t1")) == sid


async def _start(edge, settings, git_home) -> tuple[GitApi, RunningServer]:
    """An edge for git tests whose runner the test can stop (to restart on the same workspace)."""
    server = await edge(git_allow_local=True, child_env=git_settings(settings, git_home).child_env)
    return GitApi(server.origin, aiohttp.ClientSession(), server.app), server
