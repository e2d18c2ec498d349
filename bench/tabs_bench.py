"""What per-tab sessions (edge/prefixing.py) cost a page load in Chromium, against straight to Astro.

The same servers as ``pageload_bench.py`` (one ``astro dev`` of examples/site,
one edge with a route to it), but Chromium treats the edge's public origin as
secure (``--unsafely-treat-insecure-origin-as-secure``, as https is in
production), so it sends Fetch Metadata and the edge gives the page's and its
modules' URLs the session prefix. Each round, in a fresh browser context per path:

* first visit: wall time from ``goto`` until the page's ``load`` event;
* reload: the Navigation Timing ``loadEventEnd`` and the last resource of a
  reload of that page (through the edge every request is under the prefix).

The HMR column: wall time from writing the CSS file to the ``h1``'s new
colour in the page, through the edge (HMR socket and re-import under the
prefix) and direct (``main h1``, else the first ``h1``). Run:
``.venv/bin/python bench/tabs_bench.py [--rounds 5] [--site starlight]`` (``--site``: see preview_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import Browser, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

from pageload_bench import SESSION, TIMING_JS, WATCHDOG, start_servers
import preview_bench
from preview_bench import SITES, use_site
from processes import Processes

from tests.chromium import CHROMIUM, CHROMIUM_ARGS, PUBLIC_HOST  # noqa: E402  (pageload_bench put the root on sys.path)

failures: dict[str, int] = {}
COLOR = "() => getComputedStyle(document.querySelector('main h1') || document.querySelector('h1')).color"


async def visit(browser: Browser, url: str, css: Path, colours: list[str]) -> dict[str, float]:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        started = time.perf_counter()
        await page.goto(url, wait_until="load", timeout=60_000)
        await page.wait_for_function("() => document.readyState === 'complete'", timeout=60_000)
        first = (time.perf_counter() - started) * 1000
        await page.wait_for_load_state("networkidle", timeout=60_000)
        connected = asyncio.Event()
        page.on("console", lambda message: "[vite] connected" in message.text and connected.set())
        await page.reload(wait_until="load")
        await page.wait_for_load_state("networkidle", timeout=60_000)
        timing = await page.evaluate(TIMING_JS)
        await asyncio.wait_for(connected.wait(), 60)  # an edit before the HMR socket is up would be missed
        old, new = colours
        text = css.read_text()
        started = time.perf_counter()
        css.write_text(text.replace(old, new))
        await page.wait_for_function(f"() => ({COLOR})() === '{new}'", timeout=60_000)
        hmr = (time.perf_counter() - started) * 1000
        colours.reverse()
        return {"first": first, "load": timing["load"], "all": timing["all"], "hmr": hmr}
    finally:
        await context.close()


async def measure(astro_port: int, edge_port: int, css: Path, rounds: int) -> dict[str, list[dict[str, float]]]:
    edge_origin = f"http://{PUBLIC_HOST}:{edge_port}"
    urls = {"edge": f"{edge_origin}/session/{SESSION}/", "direct": f"http://127.0.0.1:{astro_port}/"}
    colours = ["rgb(1, 2, 3)", "rgb(200, 30, 40)"]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    failures.update({name: 0 for name in urls})
    async with async_playwright() as playwright:
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={edge_origin}"]
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            for _ in range(2):  # warm-up: Vite's first compile
                for url in urls.values():
                    await visit(browser, url, css, colours)
            for n in range(rounds):
                order = list(urls) if n % 2 == 0 else list(reversed(urls))
                for name in order:
                    try:
                        results[name].append(await visit(browser, urls[name], css, colours))
                    except PlaywrightTimeout as exc:  # counted and shown: a missed HMR update is a finding, not noise
                        failures[name] += 1
                        print(f"{name}: {str(exc).splitlines()[0]}", file=sys.stderr)
        finally:
            await browser.close()
    return results


def report(results: dict[str, list[dict[str, float]]], rounds: int, loadavg: tuple[float, float, float]) -> None:
    print(f"\nPer-tab sessions in Chromium: {preview_bench.BENCH_SITE.name} site, {os.cpu_count()} cores, {rounds} rounds, "
          f"load average at start {loadavg[0]:.2f} {loadavg[1]:.2f} {loadavg[2]:.2f}\n")
    print(f"{'measure':34}  {'edge median':>11}  {'direct median':>13}  {'edge/direct':>11}  {'paired':>6}")
    for key, label in (("first", "first visit, wall ms"), ("load", "reload loadEventEnd ms"),
                       ("all", "reload, all resources ms"), ("hmr", "HMR CSS edit to new colour ms")):
        edge = statistics.median(r[key] for r in results["edge"])
        direct = statistics.median(r[key] for r in results["direct"])
        # paired: the median of each round's edge/direct ratio (a busy moment hits both sides of a round alike)
        paired = statistics.median(e[key] / d[key] for e, d in zip(results["edge"], results["direct"]))
        print(f"{label:34}  {edge:11.1f}  {direct:13.1f}  {edge / direct:11.3f}  {paired:6.3f}")
    print(f"timed-out visits (not in the medians): {failures}")


def main(rounds: int, site: str = "example") -> None:
    bench_site = use_site(site)
    loadavg = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tabs-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            astro_port, edge_port = start_servers(procs, Path(tmp))
            css = Path(tmp) / "site" / bench_site.css
            results = asyncio.run(asyncio.wait_for(measure(astro_port, edge_port, css, rounds), WATCHDOG))
        finally:
            procs.stop_all()
    report(results, rounds, loadavg)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--site", choices=sorted(SITES), default="example")
    options = parser.parse_args()
    main(options.rounds, options.site)
