"""The /api/astro/... routes: validation, build, logs, status."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.astro

BAD_IDS = ["-lead", ".hidden", "a..b", "x" * 65, "sp%20ace", "semi;colon"]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_invalid_ids_are_refused_before_anything_happens(preview_edge, settings, bad):
    edge = await preview_edge()
    for action, method in (("start", "POST"), ("build", "POST"), ("stop", "POST"), ("logs", "GET"), ("status", "GET")):
        for ids in (f"{bad}/u1/t1", f"c1/{bad}/t1", f"c1/u1/{bad}"):
            status, body = await edge.api(method, action, ids)
            assert status == 400, (action, ids, body)
            assert body["success"] is False and "invalid" in body["error"]
    assert not settings.workspace_path.exists() or not any(settings.workspace_path.rglob("*t1*"))
    assert edge.supervisor.previews == {}


async def test_a_thread_without_a_folder_is_not_found(preview_edge):
    edge = await preview_edge()
    status, body = await edge.api("POST", "start", "c1/u1/nothere")
    assert status == 404 and body["success"] is False
    status, body = await edge.api("POST", "stop", "c1/u1/nothere")
    assert status == 200 and body["wasRunning"] is False


async def test_build_reports_success_duration_and_output(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()
    status, body = await edge.api("POST", "build", thread)
    assert status == 200, body
    assert body["success"] is True
    assert body["outputDir"] == "dist"
    assert body["durationSeconds"] > 0
    assert (thread.path / "dist" / "index.html").is_file()


async def test_a_failing_build_returns_its_error_output(preview_edge, make_thread):
    thread = make_thread("t1")
    (thread.path / "src" / "pages" / "index.astro").write_text("---\nimport Missing from '../nope/Missing.astro';\n---\n<Missing />\n")
    edge = await preview_edge()
    status, body = await edge.api("POST", "build", thread)
    assert status == 422
    assert body["success"] is False
    assert "astro build exited with code" in body["error"]
    assert any("Missing.astro" in line for line in body["output"])


async def test_logs_tail_and_follow(preview_edge, make_thread):
    thread = make_thread("t1")
    edge = await preview_edge()
    await edge.api("POST", "start", thread)

    status, body = await edge.api("GET", "logs", thread, lines="200")
    assert status == 200 and body["state"] == "ready"
    assert any("starting Astro" in line for line in body["lines"])

    async with edge.client.get(edge.url(f"/api/astro/logs/{thread.ids}"), params={"follow": "1", "lines": "0"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        restart = asyncio.create_task(edge.api("POST", "restart", thread))
        seen = []
        async with asyncio.timeout(120):
            async for raw in resp.content:
                seen.append(raw.decode())
                if "ready in" in seen[-1]:
                    break
        await restart
    assert any("stopping: restart requested" in line for line in seen)
    assert any("starting Astro" in line for line in seen)


async def test_logs_survive_in_the_log_file(preview_edge, make_thread, settings):
    thread = make_thread("t1")
    edge = await preview_edge()
    await edge.api("POST", "start", thread)
    await edge.api("POST", "stop", thread)
    log_file = settings.workspace_path / ".edge" / "logs" / f"{thread.session_id}.log"
    text = log_file.read_text()
    assert "starting Astro" in text and "stopping: stop requested" in text
