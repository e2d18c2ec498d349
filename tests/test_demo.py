"""``edge demo`` run as a user runs it: a subprocess, its printed URLs, a real browser, a simulated edit.

No npm runs: the demo's dependency store (``<demo>/workspace/.node_modules/<key>``)
is seeded from the Astro 5 cache beforehand, as a second thread of an installed
repository finds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from preview.deps import store_key
from preview.node import node_version
from tests.conftest import free_port
from tests.fixtures_astro import CACHE, EXAMPLE_SITE, ROOT, _link_node_modules, node_for, require
from tests.fixtures_preview import processes_in
from tests.support.polling import wait_until

STARTUP_TIMEOUT = 180.0
PAGE_TIMEOUT = 120_000  # ms, for Playwright
PREVIEW_URL = re.compile(r"Preview:\s+(http://localhost:\d+/session/[a-z0-9-]+/)")
HOST_URL = re.compile(r"Host mode:\s+(http://[a-z0-9-]+\.localhost:\d+/)")



class Demo:
    """``python -m edge demo`` in a subprocess, and what it printed."""

    def __init__(self, workspace: Path, home: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_", "CLAUDE", "GITHUB_", "AWS_"))}
        env.update(
            HOME=str(home),
            NODE_BINARY=node_for("5") or "node",
            ASTRO_PORT=str(free_port()),
            PYTHONUNBUFFERED="1",
            GIT_CONFIG_NOSYSTEM="1",
        )
        self.stderr = (workspace.parent / "demo.err").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge", "demo", "--port", str(port), "--workspace", str(workspace)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        self.lines: list[str] = []
        self._fresh: queue.Queue[str | None] = queue.Queue()
        # Drain stdout all the time (the edge's proxy log goes there too): a full pipe would block the edge.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._fresh.put(line.rstrip("\n"))
        self._fresh.put(None)

    async def read_until(self, pattern: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """Read stdout lines until one contains ``pattern``; everything read is kept in ``lines``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = await asyncio.to_thread(self._fresh.get, True, max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if pattern in line:
                return line
        err = Path(self.stderr.name).read_text(errors="replace")[-3000:]
        pytest.fail(f"the demo never printed {pattern!r}; stdout:\n" + "\n".join(self.lines) + f"\nstderr:\n{err}", pytrace=False)

    def printed(self, pattern: re.Pattern[str]) -> str:
        for line in self.lines:
            found = pattern.search(line)
            if found:
                return found.group(1)
        pytest.fail(f"the demo did not print {pattern.pattern!r}", pytrace=False)

    def everything(self) -> list[str]:
        """All of stdout, once the demo has exited."""
        while (line := self._fresh.get(timeout=10)) is not None:
            self.lines.append(line)
        return self.lines

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.stderr.close()


def curl_request(line: str) -> tuple[str, dict, dict]:
    """(url, headers, JSON body) of the ``curl`` the demo printed."""
    words = shlex.split(line.strip())
    assert words[0] == "curl", line
    url = next(w for w in words if w.startswith("http://"))
    headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
    body = json.loads(words[words.index("-d") + 1])
    return url, headers, body


@pytest.fixture
async def seeded_demo(tmp_path: Path) -> Path:
    """A demo folder whose dependency store already holds the example site's install."""
    node = node_for("5")
    cache = CACHE / "astro" / "5" / "node_modules"
    require(node is not None and (cache / "astro" / "package.json").is_file(), "Astro 5 is not installed in .cache")
    assert node is not None
    demo = tmp_path / "demo"
    store = demo / "workspace" / ".node_modules" / store_key(EXAMPLE_SITE, await node_version(node))
    store.mkdir(parents=True)
    _link_node_modules(cache, store)
    return demo


async def wait_served(client: aiohttp.ClientSession, url: str, **headers: str) -> str:
    """The page at ``url`` once the preview serves it (503 meanwhile, nothing else)."""

    async def served() -> str | None:
        async with client.get(url, headers={"Accept": "text/html", **headers}) as resp:
            text = await resp.text()
            assert resp.status in (200, 503), (resp.status, text[:500])
            return text if resp.status == 200 else None

    return await wait_until(served, f"{url} to be served", STARTUP_TIMEOUT, interval=0.25)


@pytest.mark.astro
@pytest.mark.browser
@pytest.mark.timeout(420)
async def test_the_demo_previews_the_example_site_and_a_simulated_edit_appears_live(seeded_demo, tmp_path, page):
    site_before = sorted(p.relative_to(EXAMPLE_SITE) for p in EXAMPLE_SITE.rglob("*"))
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    demo = Demo(seeded_demo, home, port)
    try:
        curl_line = await demo.read_until("curl -s ")
        preview_url, host_url = demo.printed(PREVIEW_URL), demo.printed(HOST_URL)
        assert preview_url.startswith(f"http://localhost:{port}/session/")
        session = preview_url.rsplit("/", 2)[-2]
        assert host_url == f"http://{session}.localhost:{port}/"
        assert any(f"http://localhost:{port}/_edge/" in line for line in demo.lines)
        await demo.read_until("Preview ready")

        async with aiohttp.ClientSession() as client:
            # Host mode: the session's own host name (aiohttp cannot resolve *.localhost: the Host header says it).
            text = await wait_served(client, f"http://127.0.0.1:{port}/", Host=f"{session}.localhost:{port}")
            assert "Welcome to Amelia" in text

            await page.page.goto(preview_url, timeout=PAGE_TIMEOUT)
            await page.page.wait_for_selector("h1:has-text('Welcome to Amelia')", timeout=PAGE_TIMEOUT)
            await wait_until(  # HMR listens
                lambda: any("[vite] connected" in m for m in page.console_messages),
                "Vite's HMR client to connect through the edge",
                STARTUP_TIMEOUT,
            )
            assert page.problems() == []

            url, headers, body = curl_request(curl_line)
            assert url == f"http://localhost:{port}/api/execute"
            assert body["threadId"] == "welcome" and body["instruction"]
            async with client.post(url.replace("localhost", "127.0.0.1"), json=body, headers=headers) as resp:
                answer = await resp.json()
            assert resp.status == 200 and answer["success"] is True, answer
            assert answer["mode"] == "simulation"

        # The edit reaches the open page through Vite's HMR (Astro 5 reloads the page by itself): nobody reloads it.
        marker = page.page.locator("[data-webordinary-simulation]")
        await marker.wait_for(timeout=PAGE_TIMEOUT)
        assert "hello from the demo" in await marker.inner_text()
        assert page.page.url == preview_url
        worktree = seeded_demo / "workspace" / "demo" / "owner" / "threads" / "welcome"
        assert "data-webordinary-simulation" in (worktree / "src" / "pages" / "index.astro").read_text()
    finally:
        code = demo.stop()
    assert code == 0
    # The banner stays readable: the proxy's lines went to <demo>/proxy.log, not to the terminal.
    assert not [line for line in demo.everything() if '"type":"proxy"' in line]
    assert any(f"Proxy log:       {seeded_demo / 'proxy.log'}" in line for line in demo.lines)
    assert f'"session":"{session}"' in (seeded_demo / "proxy.log").read_text()
    assert processes_in(worktree) == []  # the dev server stopped with the demo
    assert (seeded_demo / "site.git" / "HEAD").is_file()
    # examples/site was only read.
    assert sorted(p.relative_to(EXAMPLE_SITE) for p in EXAMPLE_SITE.rglob("*")) == site_before
    assert "data-webordinary-simulation" not in (EXAMPLE_SITE / "src" / "pages" / "index.astro").read_text()


async def test_the_demo_refuses_a_folder_that_is_no_npm_project(tmp_path):
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "edge", "demo", "--port", str(free_port()), "--workspace", str(tmp_path / "d"), "--site", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not an npm project" in result.stderr
    assert not (tmp_path / "d").exists()
