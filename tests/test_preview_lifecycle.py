"""A thread's preview through the API: start, ready, stop, restart, crash, failure, idle, LRU."""

from __future__ import annotations

import os
import signal

import pytest

from edge import keys
from edge.settings import CHILD_ENV_ALLOWLIST
from preview.node import ASTRO_ENV
from preview.procs import group_members
from tests.fixtures_preview import group_gone, processes_in
from tests.support.polling import wait_until

pytestmark = pytest.mark.astro


def set_heading(thread, text: str) -> None:
    index = thread.path / "src" / "pages" / "index.astro"
    index.write_text(index.read_text().replace("Welcome to Amelia's site", text))


async def test_start_ready_stop_restart(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()

    status, body = await edge.api("POST", "start", thread)
    assert status == 200, body
    assert body["success"] is True and body["state"] == "ready"
    assert body["url"] == f"/session/{thread.session_id}/"
    first_pid = body["pid"]
    assert group_members(first_pid)
    assert first_pid in processes_in(thread.path)

    code, page, headers = await edge.get(f"/session/{thread.session_id}/", Accept="text/html")
    assert code == 200
    assert "Welcome to Amelia&#39;s site" in page or "Welcome to Amelia's site" in page
    assert headers["X-Edge-Session"] == thread.session_id

    status, body = await edge.api("POST", "stop", thread)
    assert (status, body["success"], body["state"], body["wasRunning"]) == (200, True, "stopped", True)
    assert group_gone(first_pid)
    assert processes_in(thread.path) == []
    assert edge.supervisor.status(thread.session_id)["state"] == "stopped"
    assert edge.server.app[keys.SESSIONS].get(thread.session_id) is None

    status, body = await edge.api("POST", "restart", thread)
    assert status == 200 and body["state"] == "ready", body
    assert body["pid"] != first_pid
    code, _, _ = await edge.get(f"/session/{thread.session_id}/")
    assert code == 200


async def test_two_threads_run_at_once_with_their_own_content(preview_edge, make_thread):
    one, two = make_thread("one"), make_thread("two")
    set_heading(one, "Thread one heading")
    set_heading(two, "Thread two heading")
    edge = await preview_edge()

    for thread in (one, two):
        status, body = await edge.api("POST", "start", thread)
        assert status == 200, body
    ports = {edge.supervisor.status(t.session_id)["port"] for t in (one, two)}
    assert len(ports) == 2

    _, page_one, _ = await edge.get(f"/session/{one.session_id}/")
    _, page_two, _ = await edge.get(f"/session/{two.session_id}/")
    assert "Thread one heading" in page_one and "Thread two heading" not in page_one
    assert "Thread two heading" in page_two and "Thread one heading" not in page_two


async def test_a_killed_dev_server_is_restarted_and_serves_again(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()
    status, body = await edge.api("POST", "start", thread)
    assert status == 200, body
    old_pid = body["pid"]

    os.kill(old_pid, signal.SIGKILL)

    await wait_until(lambda: edge.supervisor.status(thread.session_id)["state"] != "ready", "the crash to be noticed", 30)
    status = await edge.wait_state(thread.session_id, {"ready", "failed"})
    assert status["state"] == "ready", status
    assert status["pid"] != old_pid
    assert status["restarts"] == 1
    assert group_gone(old_pid)
    code, page, _ = await edge.get(f"/session/{thread.session_id}/")
    assert code == 200 and "Amelia" in page


async def test_a_broken_config_fails_with_the_error_in_the_status(preview_edge, make_thread):
    thread = make_thread("broken")
    (thread.path / "astro.config.mjs").write_text('throw new Error("broken config on purpose");\n')
    edge = await preview_edge()

    status, body = await edge.api("POST", "start", thread)

    assert status == 500
    assert body["success"] is False and body["state"] == "failed"
    assert "exited with code" in body["error"]
    assert any("broken config on purpose" in line for line in body["logTail"])
    assert body["pid"] is None
    code, page, _ = await edge.get(f"/session/{thread.session_id}/", Accept="text/html")
    assert code == 502
    assert "broken config on purpose" in page


async def test_an_idle_preview_is_stopped(preview_edge, make_thread):
    thread = make_thread("sleepy")
    edge = await preview_edge(preview_idle_minutes=0.02)  # 1.2 s
    status, body = await edge.api("POST", "start", thread)
    assert status == 200, body

    await edge.wait_state(thread.session_id, {"stopped"}, timeout=30)
    assert group_gone(body["pid"])
    assert "idle" in "\n".join(edge.supervisor.get(thread.session_id).log.tail(5))


async def test_max_previews_stops_the_least_recently_used(preview_edge, make_thread):
    first, second = make_thread("first"), make_thread("second")
    edge = await preview_edge(max_previews=1)
    status, body = await edge.api("POST", "start", first)
    assert status == 200, body

    status, second_body = await edge.api("POST", "start", second)

    assert status == 200, second_body
    assert edge.supervisor.status(first.session_id)["state"] == "stopped"
    assert group_gone(body["pid"])
    assert edge.supervisor.counts()["ready"] == 1
    assert "MAX_PREVIEWS" in "\n".join(edge.supervisor.get(first.session_id).log.tail(5))


async def test_the_health_check_counts_previews_by_state(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()
    await edge.api("POST", "start", thread)
    async with edge.client.get(edge.url("/health")) as resp:
        health = await resp.json()
    assert health["previews"]["ready"] == 1
    assert health["previews"]["failed"] == 0


async def test_the_dev_server_gets_only_allowlisted_variables(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge(github_token="ghp_TestTokenNeverInherited")
    status, body = await edge.api("POST", "start", thread)
    assert status == 200, body

    environ = open(f"/proc/{body['pid']}/environ", "rb").read().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environ if entry}

    assert names <= set(CHILD_ENV_ALLOWLIST) | set(ASTRO_ENV) | {"LANG"}
    assert {"ASTRO_DEV_BACKGROUND", "ASTRO_TELEMETRY_DISABLED", "ASTRO_DISABLE_UPDATE_CHECK"} <= names
    assert b"ghp_TestTokenNeverInherited" not in b"\0".join(environ)


async def test_a_start_that_takes_too_long_fails_and_leaves_no_process(preview_edge, make_thread):
    thread = make_thread("slow")
    edge = await preview_edge(astro_start_timeout=0.3)

    status, body = await edge.api("POST", "start", thread)

    assert status == 500 and body["state"] == "failed"
    assert "did not answer GET / within 0.3s" in body["error"]
    assert any("starting Astro" in line for line in body["logTail"])
    spawned = [line for line in edge.supervisor.get(thread.session_id).log.tail(400) if "starting Astro" in line]
    assert len(spawned) == 1
    assert edge.supervisor.ports.held == frozenset()
    assert processes_in(thread.path) == []
