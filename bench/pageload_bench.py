"""Page load of a preview in Chromium: through the edge against straight to Astro.

On 127.0.0.1 only, it starts one ``astro dev`` (examples/site, Astro 5 from
.cache/astro/5) and one edge (``python -m edge serve``, route added with
``POST /api/routes/<id>``), then loads the same page in headless Chromium

* through the edge: ``http://edit.amelia.webordinary.com:<edge port>/session/<id>/``
  (Chromium maps the name to 127.0.0.1 with ``--host-resolver-rules``);
* straight to Astro: ``http://127.0.0.1:<astro port>/``.

Both paths hit the same dev server, which is warmed first (Vite's first
compile and dependency optimisation are not measured). Each round uses a
fresh browser context, so nothing is cached in the browser, and the two
paths alternate which goes first. Per load it records the Navigation Timing
``loadEventEnd`` and the time until the last resource finished (after the
network went idle). Run: ``.venv/bin/python bench/pageload_bench.py [--rounds 10] [--site starlight]``
(``--site``: see preview_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.async_api import Browser, async_playwright
from playwright.async_api import Error as PlaywrightError

import preview_bench
from preview_bench import ROOT, SITES, astro_entry, copy_site, free_port, use_site
from processes import Processes

sys.path.insert(0, str(ROOT))  # the tests' Chromium settings are the one definition
from tests.chromium import CHROMIUM, CHROMIUM_ARGS, PUBLIC_HOST  # noqa: E402

API_TOKEN = "bench-token"
SESSION = "bench"
WATCHDOG = 600.0  # the whole run; a hang ends here and every process is still stopped
READY_TIMEOUT = 120.0

TIMING_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const resources = performance.getEntriesByType('resource');
  const lastResource = Math.max(0, ...resources.map(r => r.responseEnd));
  return {load: nav.loadEventEnd, all: Math.max(nav.loadEventEnd, lastResource), resources: resources.length};
}"""


def wait_200(url: str, procs: Processes, name: str) -> None:
    """Poll ``url`` until it answers 200; exit with the process's log if it never does."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer 200 at {url}; its log:\n{procs.log_tail(name)}")


def add_route(edge: str, target: str) -> None:
    request = urllib.request.Request(
        f"{edge}/api/routes/{SESSION}", data=json.dumps({"target": target}).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


def start_servers(procs: Processes, tmp: Path) -> tuple[int, int]:
    """``astro dev`` and the edge on free ports, the route added; returns (astro port, edge port)."""
    site = copy_site(tmp / "site", with_modules=True)
    astro_port, edge_port = free_port(), free_port()
    node = preview_bench.BENCH_SITE.node or shutil.which("node") or sys.exit("node is not on PATH")
    procs.start(
        "astro", [node, astro_entry(site), "dev", "--host", "127.0.0.1", "--port", str(astro_port)],
        cwd=site,
        env={"ASTRO_DEV_BACKGROUND": "0", "ASTRO_TELEMETRY_DISABLED": "1", "ASTRO_DISABLE_UPDATE_CHECK": "true", "BROWSER": "none"},
    )
    procs.start(
        "edge", [sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1", "--port", str(edge_port)],
        env={
            "WORKSPACE_PATH": str(tmp / "workspace"),
            "EDGE_API_TOKEN": API_TOKEN,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    wait_200(f"http://127.0.0.1:{astro_port}/", procs, "astro")
    wait_200(f"http://127.0.0.1:{edge_port}/health", procs, "edge")
    add_route(f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{astro_port}")
    return astro_port, edge_port


async def load(browser: Browser, url: str) -> dict[str, float]:
    """One load in a fresh context: timings in ms, after the network went idle."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        failures: list[str] = []
        page.on("requestfailed", lambda r: failures.append(f"{r.url} ({r.failure})"))
        page.on("response", lambda r: r.status >= 400 and failures.append(f"HTTP {r.status} {r.url}"))
        response = await page.goto(url, wait_until="load", timeout=60_000)
        if response is None or response.status != 200:
            raise RuntimeError(f"{url} answered {response and response.status}")
        await page.wait_for_load_state("networkidle", timeout=60_000)
        if failures:
            raise RuntimeError(f"{url}: {failures}")
        return await page.evaluate(TIMING_JS)
    finally:
        await context.close()


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


async def measure(astro_port: int, edge_port: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    urls = {
        "edge": f"http://{PUBLIC_HOST}:{edge_port}/session/{SESSION}/",
        "direct": f"http://127.0.0.1:{astro_port}/",
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for _ in range(3):  # warm-up: Vite compiles and optimises dependencies on first use
                for url in urls.values():
                    try:
                        await load(browser, url)
                    except (RuntimeError, PlaywrightError) as exc:  # e.g. Vite's 504 while it re-optimises
                        print(f"warm-up: {exc}", file=sys.stderr)
            for n in range(rounds):
                order = list(urls) if n % 2 == 0 else list(reversed(urls))
                for name in order:
                    results[name].append(await load(browser, urls[name]))
        finally:
            await browser.close()
    return results


def report(results: dict[str, list[dict[str, float]]], rounds: int, loadavg: tuple[float, float, float]) -> None:
    print(f"\nPage load in Chromium: {preview_bench.BENCH_SITE.name} site, {os.cpu_count()} cores, {rounds} rounds, "
          f"load average at start {loadavg[0]:.2f} {loadavg[1]:.2f} {loadavg[2]:.2f}\n")
    print(f"{'path':8}  {'measure':24}  {'median ms':>9}  {'p90 ms':>7}  {'min':>6}  {'max':>6}  resources")
    for key, label in (("load", "loadEventEnd"), ("all", "all resources loaded")):
        for name, rows in results.items():
            values = [row[key] for row in rows]
            counts = sorted({int(row["resources"]) for row in rows})
            print(f"{name:8}  {label:24}  {statistics.median(values):9.1f}  {p90(values):7.1f}  "
                  f"{min(values):6.1f}  {max(values):6.1f}  {counts}")
        ratio = statistics.median(r[key] for r in results["edge"]) / statistics.median(r[key] for r in results["direct"])
        print(f"{'ratio':8}  {label:24}  {ratio:9.3f}  (edge / direct medians; target ≤ 1.10)\n")


def main(rounds: int, site: str = "example") -> None:
    use_site(site)
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pageload-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            astro_port, edge_port = start_servers(procs, Path(tmp))
            results = asyncio.run(asyncio.wait_for(measure(astro_port, edge_port, rounds), WATCHDOG))
        finally:
            procs.stop_all()
    report(results, rounds, loadavg)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--site", choices=sorted(SITES), default="example")
    options = parser.parse_args()
    main(options.rounds, options.site)
