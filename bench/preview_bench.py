"""How long a preview takes to appear, and what it costs.

Measures, on 127.0.0.1 only:

* on demand: a request for a stopped thread through the edge, until the first 200;
* by hand: ``astro dev`` started directly on the same site, until GET / answers 200;
* a new thread of an already-installed repository (no node_modules yet, same
  lockfile): linking the shared install plus the start, until the first 200;
* the first preview of a new repository (``npm ci`` into the edge's store,
  then the start) against the same by hand (``npm ci`` and ``astro dev`` in a
  new folder, with the same npm cache);
* resident memory per preview (the dev server's whole process group).

Two sites (``--site``): ``example`` (examples/site, Astro 5 from
.cache/astro/5) and ``starlight`` (bench/sites/starlight: Astro 7 with
Starlight, a bigger real theme; installed once with ``npm ci`` into
.cache/bench/starlight, run with Node 22 from .cache/bin/node22 by the edge
and by hand alike). Needs ``bash scripts/setup.sh``. Run:
``.venv/bin/python bench/preview_bench.py [--rounds 5] [--site starlight]``.
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
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class BenchSite:
    """A site to preview: its files, an installed node_modules to hard-link, the Node that runs it."""

    name: str
    source: Path
    modules: Path
    node: str | None  # NODE_BINARY for the edge and by hand; None: the default Node
    css: str  # the stylesheet (relative to the site) whose rgb(1, 2, 3) the HMR benchmarks edit

    def prepare(self) -> None:
        """Install the site once (``npm ci``) where ``modules`` says, if it is not there yet."""
        if (self.modules / "astro" / "package.json").is_file():
            return
        if self.name == "example":
            raise SystemExit("Astro 5 is missing: run bash scripts/setup.sh")
        folder = self.modules.parent
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(self.source / name, folder / name)
        node = resolve_node(self.node or "node")
        npm = ROOT / ".cache" / "npm" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        npm_argv = [node, str(npm)] if npm.is_file() else ["npm"]
        print(f"installing {self.name} into {folder} (once) ...", flush=True)
        subprocess.run([*npm_argv, "ci", "--no-audit", "--no-fund"], cwd=folder, check=True, stdout=subprocess.DEVNULL)


SITES = {
    "example": BenchSite("example", SITE, ASTRO5, None, "src/styles/global.css"),
    "starlight": BenchSite(
        "starlight", ROOT / "bench" / "sites" / "starlight", ROOT / ".cache" / "bench" / "starlight" / "node_modules",
        str(ROOT / ".cache" / "bin" / "node22"), "src/styles/custom.css",
    ),
}
BENCH_SITE = SITES["example"]  # --site sets it (also for pageload_bench and tabs_bench)


def use_site(name: str) -> BenchSite:
    """Choose the site every helper here copies and starts."""
    global BENCH_SITE
    BENCH_SITE = SITES[name]
    BENCH_SITE.prepare()
    return BENCH_SITE


def astro_entry(folder: Path) -> str:
    """Astro's command-line script in ``folder`` (``astro.js`` in Astro 5, ``bin/astro.mjs`` in Astro 7)."""
    for entry in ("node_modules/astro/astro.js", "node_modules/astro/bin/astro.mjs"):
        if (folder / entry).is_file():
            return entry
    raise FileNotFoundError(f"no Astro in {folder}/node_modules")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_site(target: Path, with_modules: bool) -> Path:
    shutil.copytree(BENCH_SITE.source, target, ignore=shutil.ignore_patterns("node_modules", ".astro", "dist"))
    if with_modules:
        subprocess.run(["cp", "-al", str(BENCH_SITE.modules), str(target / "node_modules")], check=True)
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


async def by_hand(settings: Settings, folder: Path, client: aiohttp.ClientSession, install: bool = False) -> float:
    """``astro dev`` run directly (after ``npm ci`` when ``install``), timed the same way."""
    node = resolve_node(settings.node_binary)
    port = free_port()
    started = time.monotonic()
    if install:
        npm = ROOT / ".cache" / "npm" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        env = {**child_env(settings, node), "npm_config_cache": str(settings.npm_cache_dir)}
        npm_argv = [node, str(npm)] if npm.is_file() else ["npm"]
        await asyncio.to_thread(
            subprocess.run, [*npm_argv, "ci", "--no-audit", "--no-fund", "--no-progress"], cwd=folder, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )
    process = subprocess.Popen(
        [node, astro_entry(folder), "dev", "--host", "127.0.0.1", "--port", str(port)],
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


async def main(rounds: int, site: str) -> None:
    bench_site = use_site(site)
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
            **({"node_binary": bench_site.node} if bench_site.node else {}),
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
                # The same by hand: npm ci (same npm cache, so both fetch nothing) and astro dev in a new folder.
                install_by_hand = await by_hand(settings, copy_site(Path(tmp) / "install-by-hand", with_modules=False), client, install=True)
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
        ("the same by hand: npm ci + astro dev in a new folder (s)", summary([install_by_hand])),
        ("new thread of an installed repository → first 200 (s)", summary(new_thread)),
        ("astro dev by hand in a new installed folder → first 200 (s)", summary(fresh)),
        ("new thread / astro dev by hand, new folder (medians)", f"{statistics.median(new_thread) / statistics.median(fresh):.2f}"),
        ("new thread / astro dev by hand, warm (medians)", f"{statistics.median(new_thread) / statistics.median(direct):.2f}"),
        ("npm runs for 1 + {} threads of one repository".format(rounds), str(installs)),
        ("resident memory per preview, process group (MiB)", summary(memory)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nPreview benchmark: {bench_site.name} site, Node {await _node_version(settings)}, {os.cpu_count()} cores, "
          f"{rounds} rounds, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end\n")
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
    parser.add_argument("--site", choices=sorted(SITES), default="example")
    options = parser.parse_args()
    asyncio.run(main(options.rounds, options.site))
