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
prefix) and direct (``main h1``, else the first ``h1``).

Each ratio is given three ways: of the medians; paired (the median of each
round's edge/direct ratio: a busy moment hits both sides of a round alike);
and the paired ratio's 95 % bootstrap interval, which says whether a run can
tell the result from the target (10 rounds on 2 busy cores: about ±0.1).
"added" is the median of the rounds' differences in ms, which does not grow
or shrink with how fast the browser itself is.
``--nginx`` adds Debian's nginx as a third path, a reverse proxy in C with
keep-alive upstream connections, streaming, and nothing rewritten: what any
proxy hop costs on this machine. ``--rtt MS`` gives every path the same
network round trip (Chromium's network emulation; WebSockets are not
delayed), as a site owner's browser has to a Fargate task. ``--split-cpus``
runs Chromium on the first half of the CPUs and the servers (Astro, the edge,
nginx) on the rest: a site owner's browser never shares a CPU with the edge,
and on a small machine a browser busy with a page load otherwise waits for
whatever any proxy spends (the edge's Python, about 20 ms a Starlight reload).
Run: ``.venv/bin/python bench/tabs_bench.py [--rounds 5] [--site starlight] [--nginx] [--rtt 20] [--split-cpus]``
(``--site``: see preview_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import Browser, async_playwright
from playwright.async_api import TimeoutError as PlaywrightTimeout

import nginx
import pageload_bench
from pageload_bench import SESSION, TIMING_JS, WATCHDOG, start_servers
import preview_bench
from preview_bench import SITES, free_port, use_site
from processes import Processes

from tests.chromium import CHROMIUM, CHROMIUM_ARGS, PUBLIC_HOST  # noqa: E402  (pageload_bench put the root on sys.path)

failures: dict[str, int] = {}
# Chromium now and then never answers a context's close (Target.disposeBrowserContext: three times in
# about 300 visits of the example site, on the direct path too): then the browser is launched again.
CLOSE_TIMEOUT = 30.0
stuck: list[str] = []  # the URLs whose context did not close
COLOR = "() => getComputedStyle(document.querySelector('main h1') || document.querySelector('h1')).color"


async def visit(browser: Browser, url: str, css: Path, colours: list[str], rtt: float = 0) -> dict[str, float]:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        if rtt:  # every HTTP request of this tab waits one round trip more (not the HMR socket's messages)
            cdp = await context.new_cdp_session(page)
            await cdp.send("Network.enable")
            await cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": rtt, "downloadThroughput": -1, "uploadThroughput": -1})
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
        try:
            await asyncio.wait_for(context.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            stuck.append(url)


async def measure(urls: dict[str, str], css: Path, rounds: int, rtt: float) -> dict[str, list[dict[str, float]]]:
    """Each round visits every path in turn, in the opposite order every other round."""
    colours = ["rgb(1, 2, 3)", "rgb(200, 30, 40)"]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    failures.update({name: 0 for name in urls})
    edge_origin = urls["edge"].partition("/session/")[0]
    async with async_playwright() as playwright:
        args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={edge_origin}"]

        async def launch() -> Browser:
            return await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)

        browser, launched_again = await launch(), 0
        try:
            warm_up = [list(urls)] * 2  # Vite's first compile
            rounds_order = [list(urls) if n % 2 == 0 else list(reversed(urls)) for n in range(rounds)]
            for n, order in enumerate(warm_up + rounds_order):
                for name in order:
                    try:
                        result = await visit(browser, urls[name], css, colours, rtt)
                        if n >= len(warm_up):
                            results[name].append(result)
                    except (PlaywrightTimeout, TimeoutError) as exc:  # counted and shown: a missed HMR update or socket is a finding, not noise
                        failures[name] += 1
                        print(f"{name}: {str(exc).splitlines()[0]}", file=sys.stderr)
                    if len(stuck) > launched_again:
                        print(f"Chromium did not close the context of {stuck[-1]}: launching it again", file=sys.stderr)
                        await close_browser(browser)
                        browser, launched_again = await launch(), len(stuck)
        finally:
            await close_browser(browser)
    return results


async def close_browser(browser: Browser) -> None:
    """Close it, or leave it to Playwright's exit (which kills its process) if it does not answer."""
    try:
        await asyncio.wait_for(browser.close(), CLOSE_TIMEOUT)
    except TimeoutError:
        pass


def paired_interval(ratios: list[float], resamples: int = 2000) -> tuple[float, float]:
    """The 95 % bootstrap interval of the median of ``ratios`` (seeded: a run reports the same interval twice)."""
    draw = random.Random(11)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]


def split_cpus() -> tuple[set[int], set[int]]:
    """(the browser's CPUs, the servers' CPUs): the first half of this process's CPUs and the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("--split-cpus needs at least 2 CPUs")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def report(results: dict[str, list[dict[str, float]]], rounds: int, loadavg: tuple[float, float, float], rtt: float, cpus: str) -> None:
    print(f"\nPer-tab sessions in Chromium: {preview_bench.BENCH_SITE.name} site, {os.cpu_count()} cores ({cpus}), {rounds} rounds, "
          f"round trip {rtt:g} ms, load average at start {loadavg[0]:.2f} {loadavg[1]:.2f} {loadavg[2]:.2f}\n")
    print(f"{'measure':31} {'path':6} {'median':>8} {'direct':>8} {'ratio':>6} {'paired':>6}  95% interval  {'added':>6}")
    for key, label in (("first", "first visit, wall ms"), ("load", "reload loadEventEnd ms"),
                       ("all", "reload, all resources ms"), ("hmr", "HMR CSS edit to new colour ms")):
        direct = statistics.median(r[key] for r in results["direct"])
        for path in (name for name in results if name != "direct"):
            median = statistics.median(r[key] for r in results[path])
            ratios = [e[key] / d[key] for e, d in zip(results[path], results["direct"])]
            low, high = paired_interval(ratios)
            added = statistics.median(e[key] - d[key] for e, d in zip(results[path], results["direct"]))
            print(f"{label:31} {path:6} {median:8.1f} {direct:8.1f} {median / direct:6.3f} {statistics.median(ratios):6.3f}  "
                  f"{low:.3f}-{high:.3f}  {added:+6.1f}")
    print(f"timed-out visits (not in the medians): {failures}; contexts Chromium did not close (browser launched again): {len(stuck)}")


# A reverse proxy in C as it is usually set up for Vite: upstream keep-alive, no buffering, WebSocket upgrades.
NGINX_HTTP = """
  access_log {dir}/access.log;  # a line per request, as the edge writes its proxy log
  upstream astro {{ server 127.0.0.1:{astro}; keepalive 32; }}
  map $http_upgrade $upgrade_connection {{ default upgrade; '' ''; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://astro;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $upgrade_connection;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
"""


def start_nginx(procs: Processes, workdir: Path, astro_port: int) -> int:
    """nginx in front of the dev server; its URL's host is an IP literal, which Vite lets through."""
    folder, port = workdir / "nginx", free_port()
    nginx.start(procs, "nginx", folder, NGINX_HTTP.format(dir=folder, astro=astro_port, port=port))
    pageload_bench.wait_200(f"http://127.0.0.1:{port}/", procs, "nginx")
    return port


def main(rounds: int, site: str = "example", with_nginx: bool = False, rtt: float = 0, split: bool = False) -> None:
    bench_site = use_site(site)
    if with_nginx and not nginx.NGINX.exists():
        sys.exit(f"--nginx needs {nginx.NGINX}: run `bash scripts/setup.sh` first")
    loadavg = os.getloadavg()
    everything = os.sched_getaffinity(0)
    browser_cpus, server_cpus = split_cpus() if split else (everything, everything)
    cpus = f"browser on CPUs {sorted(browser_cpus)}, servers on {sorted(server_cpus)}" if split else "shared by browser and servers"
    with tempfile.TemporaryDirectory(prefix="tabs-bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            os.sched_setaffinity(0, server_cpus)  # the servers started now inherit it
            astro_port, edge_port = start_servers(procs, Path(tmp))
            urls = {"edge": f"http://{PUBLIC_HOST}:{edge_port}/session/{SESSION}/", "direct": f"http://127.0.0.1:{astro_port}/"}
            if with_nginx:
                urls["nginx"] = f"http://127.0.0.1:{start_nginx(procs, Path(tmp), astro_port)}/"
            os.sched_setaffinity(0, browser_cpus)  # and Playwright's driver and Chromium this
            css = Path(tmp) / "site" / bench_site.css
            results = asyncio.run(asyncio.wait_for(measure(urls, css, rounds, rtt), WATCHDOG + 20 * rounds * len(urls)))
        finally:
            os.sched_setaffinity(0, everything)
            procs.stop_all()
    report(results, rounds, loadavg, rtt, cpus)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--site", choices=sorted(SITES), default="example")
    parser.add_argument("--nginx", action="store_true", help="also through Debian's nginx, a reverse proxy in C (for reference)")
    parser.add_argument("--rtt", type=float, default=0, help="a network round trip in ms added to every HTTP request of every path")
    parser.add_argument("--split-cpus", action="store_true", help="Chromium on the first half of the CPUs, the servers on the rest")
    options = parser.parse_args()
    main(options.rounds, options.site, options.nginx, options.rtt, options.split_cpus)
