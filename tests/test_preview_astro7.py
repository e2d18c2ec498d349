"""Astro 7: runs with Node 22, refuses Node 20 clearly, ignores a stale .astro/dev.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.astro


@pytest.fixture
def astro_lookalike(tmp_path):
    """A live process whose command line Astro takes for another `astro dev` (``…/.bin/astro``)."""
    fake = tmp_path / "other" / "node_modules" / ".bin" / "astro"
    fake.parent.mkdir(parents=True)
    fake.symlink_to(shutil.which("sleep"))
    process = subprocess.Popen([str(fake), "300"])
    yield process.pid
    process.kill()
    process.wait()


async def test_astro7_starts_with_node22_despite_a_lock_of_a_live_astro(preview_edge, make_thread, astro_lookalike):
    thread = make_thread("seven", version="7")
    lock = thread.path / ".astro" / "dev.json"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(json.dumps({
        "pid": astro_lookalike, "port": 4321, "url": "http://localhost:4321/",
        "background": False, "startedAt": "2026-01-01T00:00:00.000Z",
    }))
    edge = await preview_edge(node_binary=thread.site.node)

    status, body = await edge.api("POST", "start", thread)

    assert status == 200, body
    assert body["astroVersion"].startswith("7.")
    assert body["nodeVersion"].startswith("22.")
    code, page, _ = await edge.get(f"/session/{thread.session_id}/")
    assert code == 200 and "Welcome to Amelia" in page
    assert json.loads(lock.read_text())["pid"] == astro_lookalike  # the other server's lock is left alone


async def test_astro7_with_node20_and_no_fetching_fails_with_a_clear_error(preview_edge, make_thread):
    thread = make_thread("seven", version="7")
    node20 = shutil.which("node")
    version = subprocess.run([node20, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if not version.startswith("v20."):
        pytest.skip(f"the machine's node is {version}, not Node 20")
    edge = await preview_edge(node_binary=node20, node_fetch=False)

    status, body = await edge.api("POST", "start", thread)

    assert status == 500 and body["state"] == "failed"
    assert f"needs Node >=22.12.0, but NODE_BINARY ({os.path.realpath(node20)}) is {version}" in body["error"] or (
        f"needs Node >=22.12.0, but NODE_BINARY ({node20}) is {version}" in body["error"]
    )
    assert "Set NODE_BINARY" in body["error"]
    assert not any("starting Astro" in line for line in body["logTail"])  # refused before spawning
