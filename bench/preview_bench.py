"""How long a preview takes to appear, and what it costs.

Measures, on 127.0.0.1 only:

* on demand: a request for a stopped thread through the edge, until the first 200;
* by hand: ``astro dev`` started directly on the same site, until GET / answers 200;
* a new thread of an already-installed repository (no node_modules yet, same
  lockfile): linking the shared install plus the start, until the first 200;
* resident memory per preview (the dev server's whole process group).

Needs ``bash scripts/setup.sh`` (Astro 5 in .cache/astro/5). Run:
``.venv/bin/python bench/preview_bench.py [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from processes import stop_group

from core.ids import ThreadRef
from edge.server import start_edge
from edge.settings import Settings
from preview import PREVIEWS
from preview.node import child_env, resolve_node

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "examples" / "site"
ASTRO5 = ROOT / ".cache" / "astro" / "5" / "node_modules"
TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_site(target: Path, with_modules: bool) -> Path:
    shutil.copytree(SITE, target, ignore=shutil.ignore_patterns("node_modules", ".astro", "dist"))
    if with_modules:
        subprocess.run(["cp", "-al", str(ASTRO5), str(target / "node_modules")], check=True)
        for private in (".vite", ".astro"):
            shutil.rmtree(target / "node_modules" / private, ignore_errors=True)
    return target


async def first_200(client: aiohttp.ClientSession, url: str) -> float:
    """Seconds until GET ``url`` answers 200 (polling every 50 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < TIMEOUT:
        try:
            async with client.get(url, headers={"Accept": "text/html"}) as resp:
                await resp.read()
                if resp.status == 200:
                    return time.monotonic() - started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(url)


async def by_hand(settings: Settings, folder: Path, client: aiohttp.ClientSession) -> float:
    """``astro dev`` run directly, timed the same way."""
    node = resolve_node(settings.node_binary)
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [node, "node_modules/astro/astro.js", "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, env=child_env(settings, node), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        await first_200(client, f"http://127.0.0.1:{port}/")
        return time.monotonic() - started
    finally:
        stop_group(process)


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


async def main(rounds: int) -> None:
    if not (ASTRO5 / "astro" / "package.json").is_file():
        raise SystemExit("Astro 5 is missing: run bash scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="preview-bench-") as tmp:
        workspace = Path(tmp) / "workspace"
        threads = workspace / "c1" / "u1" / "threads"
        settings = replace(
            Settings.from_env(),
            host="127.0.0.1",
            port=0,
            workspace_path=workspace,
            astro_port=free_port(),
            npm_cache_dir=ROOT / ".cache" / "npm",
            max_previews=0,
            preview_idle_minutes=0,
        )
        copy_site(threads / "warm", with_modules=True)
        hand_site = copy_site(Path(tmp) / "by-hand", with_modules=True)
        edge = await start_edge(settings)
        supervisor = edge.runner.app[PREVIEWS]

        def session(thread: str) -> str:
            """The session id of a thread folder made here (as ``/api/astro/...`` names it)."""
            return supervisor.locator.session_id(ThreadRef("c1", "u1", thread))

        warm = session("warm")
        origin = f"http://127.0.0.1:{edge.port}"
        on_demand, direct, memory = [], [], []
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
                await by_hand(settings, hand_site, client)  # warm Vite's dependency cache once
                await first_200(client, f"{origin}/session/{warm}/")
                await supervisor.stop(warm)
                for _ in range(rounds):
                    on_demand.append(await first_200(client, f"{origin}/session/{warm}/"))
                    memory.append(supervisor.status(warm)["memoryBytes"] / 2**20)
                    await supervisor.stop(warm)
                    direct.append(await by_hand(settings, hand_site, client))

                # A repository installed once (npm ci into the shared store), then new threads of it.
                copy_site(threads / "installer", with_modules=False)
                installer = session("installer")
                install = await first_200(client, f"{origin}/session/{installer}/")
                await supervisor.stop(installer)
                new_thread, fresh = [], []
                for n in range(rounds):
                    copy_site(threads / f"new{n}", with_modules=False)
                    new = session(f"new{n}")
                    new_thread.append(await first_200(client, f"{origin}/session/{new}/"))
                    assert supervisor.status(new)["dependencies"] == "linked"
                    await supervisor.stop(new)
                    # Astro's own start of a new folder: installed, Vite's dependency cache not yet built.
                    fresh.append(await by_hand(settings, copy_site(Path(tmp) / f"fresh{n}", with_modules=True), client))
                installs = supervisor.deps.installs
        finally:
            await edge.runner.cleanup()

    rows = [
        ("stopped thread → first 200 through the edge (s)", summary(on_demand)),
        ("astro dev by hand → first 200 (s)", summary(direct)),
        ("edge overhead, median (s)", f"{statistics.median(on_demand) - statistics.median(direct):+.2f}"),
        ("first thread of a repository, npm ci + start (s)", summary([install])),
        ("new thread of an installed repository → first 200 (s)", summary(new_thread)),
        ("astro dev by hand in a new installed folder → first 200 (s)", summary(fresh)),
        ("new thread / astro dev by hand, new folder (medians)", f"{statistics.median(new_thread) / statistics.median(fresh):.2f}"),
        ("new thread / astro dev by hand, warm (medians)", f"{statistics.median(new_thread) / statistics.median(direct):.2f}"),
        ("npm runs for 1 + {} threads of one repository".format(rounds), str(installs)),
        ("resident memory per preview, process group (MiB)", summary(memory)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nPreview benchmark: Astro 5, Node {await _node_version(settings)}, {os.cpu_count()} cores, {rounds} rounds\n")
    print(f"{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


async def _node_version(settings: Settings) -> str:
    from preview.node import node_version

    return await node_version(resolve_node(settings.node_binary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
