"""Proxy benchmark: the edge against configurable-http-proxy, on this machine, in one run.

Measures, for one small static file (the size of a small stylesheet):

* requests per second and p50/p99 latency straight to the upstream (a Node
  ``http`` server, or with ``--upstream nginx`` Debian's nginx), through the edge (``python -m edge serve``
  on uvloop as it serves by default, route added with its API; one process, and with ``EDGE_WORKERS=2``
  a second process on the port; ``--asyncio`` adds the edge on asyncio's loop) and through configurable-http-proxy (``--change-origin``,
  route added with its API);
* WebSocket echo round trips per second, straight and through the proxies
  (``--ws-repeat`` rounds, interleaved: the median and the spread per path);
* for each, the CPU time the serving processes spent per request or message,
  read from /proc: unlike throughput, it hardly moves when other work
  shares the machine's two cores.

The HTTP load comes from ``wrk`` (Debian), the WebSocket load from this
script's own aiohttp client; both run in separate processes, with bounded
duration or message counts, against 127.0.0.1 only. Every process started
here is stopped at the end, and a watchdog ends a run that hangs.

Run ``bash scripts/setup.sh`` first (it installs wrk and configurable-http-proxy),
then ``.venv/bin/python bench/proxy_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import nginx
from processes import Processes

ROOT = Path(__file__).resolve().parents[1]
CHP = ROOT / ".cache" / "bin" / "configurable-http-proxy"
API_TOKEN = "bench-token"
STATIC_SESSION = "bench"
EDGE_2 = "edge, EDGE_WORKERS=2"
WS_SESSION = "benchws"
WATCHDOG_SECONDS = 900
PAYLOAD = (b"/* a small stylesheet */\nh1 { color: rgb(1, 2, 3); }\n" * 40)[:2048]
TICK = os.sysconf("SC_CLK_TCK")
EDGE_ASYNCIO = "edge (asyncio)"  # `--asyncio`: the same edge on asyncio's loop (EDGE_EVENT_LOOP=asyncio)
# A minimal static file server: the same small body for every GET, as a
# static-file server answers once the file is in memory.
NODE_STATIC = r"""
const http = require('http');
const fs = require('fs');
const body = fs.readFileSync(process.argv[1]);
const server = http.createServer((req, res) => {
  res.writeHead(200, {'Content-Type': 'text/css', 'Content-Length': body.length, 'Cache-Control': 'no-cache'});
  res.end(body);
});
server.keepAliveTimeout = 65000;
server.listen(Number(process.argv[2]), '127.0.0.1');
"""
# nginx (Debian) as the static upstream.
NGINX_HTTP = """
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 65s;
  server {{
    listen 127.0.0.1:{port};
    location / {{ root {dir}; default_type text/css; add_header Cache-Control no-cache; }}
  }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, headers: dict[str, str] | None = None) -> bytes:
    """GET ``url`` until it answers 200 (a server just started), then return the body."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
                return resp.read()
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.1)


def post_json(url: str, body: dict, headers: dict[str, str]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json", **headers}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass(frozen=True)
class Target:
    """One path under test: where the load goes, and which process does the work."""

    name: str
    url: str
    pids: tuple[int, ...]  # the serving process, and its worker processes


@dataclass
class HttpResult:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us: float  # CPU of the serving process per request


@dataclass
class WsResult:
    name: str
    messages_per_second: float
    messages: int
    cpu_us: float  # CPU of the relaying (or echoing) process per round trip
    rounds: tuple[float, ...] = ()  # msg/s of each round, when repeated


def median_of(results: list[WsResult]) -> WsResult:
    """The median round (by msg/s) of one path, with every round's rate kept for the spread."""
    ordered = sorted(results, key=lambda r: r.messages_per_second)
    middle = ordered[len(ordered) // 2]
    cpu = sorted(r.cpu_us for r in results)[len(results) // 2]
    return WsResult(middle.name, middle.messages_per_second, middle.messages, cpu, tuple(r.messages_per_second for r in results))


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def run_wrk(target: Target, *, connections: int, seconds: int, headers: dict[str, str]) -> HttpResult:
    """One wrk run (one thread, so it takes one core at most), parsed."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for key, value in headers.items():
        args += ["-H", f"{key}: {value}"]
    cpu_before = sum(map(cpu_seconds, target.pids))
    out = subprocess.run(args + [target.url], capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    cpu = sum(map(cpu_seconds, target.pids)) - cpu_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return HttpResult(target.name, rps, _ms(latency["50"]), _ms(latency["99"]), requests, errors, cpu / requests * 1e6)


def run_ws_load(target: Target, *, connections: int, messages: int) -> WsResult:
    """Echo round trips from a separate process (this script's ``ws-load`` command)."""
    args = [sys.executable, __file__, "ws-load", target.url, str(connections), str(messages)]
    cpu_before = sum(map(cpu_seconds, target.pids))
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=300).stdout
    cpu = sum(map(cpu_seconds, target.pids)) - cpu_before
    result = json.loads(out)
    return WsResult(target.name, result["messages"] / result["seconds"], result["messages"], cpu / result["messages"] * 1e6)


async def ws_load(url: str, connections: int, messages: int) -> dict:
    """``connections`` sockets, each sending ``messages`` texts and awaiting each echo."""
    import aiohttp

    payload = "x" * 64

    async def one(client: aiohttp.ClientSession) -> None:
        async with client.ws_connect(url, autoping=False) as ws:
            for _ in range(messages):
                await ws.send_str(payload)
                reply = await ws.receive(timeout=10)
                if reply.data != payload:
                    raise RuntimeError(f"bad echo: {reply!r}")

    async with aiohttp.ClientSession() as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client) for _ in range(connections)))
        seconds = time.perf_counter() - started
    return {"messages": connections * messages, "seconds": seconds}


async def ws_echo(port: int) -> None:
    """The WebSocket upstream: echoes every text message (aiohttp)."""
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def check_tools(upstream: str) -> None:
    missing = [tool for tool in ("wrk", "node") if shutil.which(tool) is None]
    if not CHP.exists():
        missing.append(str(CHP))
    if upstream == "nginx" and not nginx.NGINX.exists():
        missing.append(str(nginx.NGINX))
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `bash scripts/setup.sh` first")


def start_edge(procs: Processes, workdir: Path, name: str, loop: str = "uvloop", workers: int = 1) -> tuple[str, tuple[int, ...]]:
    """``python -m edge serve`` on event loop ``loop`` with an API token; returns origin and pids."""
    port = free_port()
    pid = procs.start(
        name,
        [sys.executable, "-m", "edge", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={
            "WORKSPACE_PATH": str(workdir / name),
            "EDGE_API_TOKEN": API_TOKEN,
            "EDGE_WORKERS": str(workers),
            "EDGE_EVENT_LOOP": loop,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        health = json.loads(wait_http(origin + "/health"))
    except RuntimeError:
        sys.exit(f"{name} did not start; its log:\n{procs.log_tail(name)}")
    if f"event loop {loop}" not in (procs.logs / f"{name}.log").read_text(errors="replace"):  # uvloop missing: asyncio
        sys.exit(f"{name} does not run on {loop}; its log:\n{procs.log_tail(name)}")
    return origin, (pid, *(w["pid"] for w in health.get("workers", [])))


def start_chp(procs: Processes) -> tuple[str, str, int]:
    """configurable-http-proxy as JupyterHub runs it; returns proxy origin, API origin, pid."""
    port, api_port = free_port(), free_port()
    pid = procs.start(
        "chp",
        [str(CHP), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1", "--api-port", str(api_port),
         "--change-origin", "--log-level", "warn"],
        env={"CONFIGPROXY_AUTH_TOKEN": API_TOKEN},
    )
    api = f"http://127.0.0.1:{api_port}"
    wait_http(api + "/api/routes", headers={"Authorization": f"token {API_TOKEN}"})
    return f"http://127.0.0.1:{port}", api, pid


def start_static(procs: Processes, workdir: Path, upstream: str) -> tuple[int, int]:
    """The static upstream (Node's http, or nginx); returns its port and pid."""
    static_file = workdir / "style.css"
    static_file.write_bytes(PAYLOAD)
    port = free_port()
    if upstream == "node":
        return port, procs.start("static", ["node", "-e", NODE_STATIC, str(static_file), str(port)])
    # configurable-http-proxy keeps the route's prefix in the path (the edge strips it): serve both.
    prefixed = workdir / "session" / STATIC_SESSION / "style.css"
    prefixed.parent.mkdir(parents=True)
    prefixed.write_bytes(PAYLOAD)
    return port, nginx.start(procs, "static", workdir, NGINX_HTTP.format(dir=workdir, port=port))


def start_servers(procs: Processes, workdir: Path, with_asyncio: bool, upstream: str) -> tuple[list[Target], list[Target]]:
    """Start upstreams and proxies, add the routes, check each path; return HTTP and WebSocket targets."""
    static_port, static_pid = start_static(procs, workdir, upstream)
    ws_port = free_port()
    echo_pid = procs.start("ws-echo", [sys.executable, __file__, "ws-echo", str(ws_port)])
    static, echo = f"http://127.0.0.1:{static_port}", f"http://127.0.0.1:{ws_port}"
    if wait_http(static + "/style.css") != PAYLOAD:
        raise RuntimeError("the static upstream returned a different body")

    proxies: dict[str, tuple[str, tuple[int, ...]]] = {
        "edge": start_edge(procs, workdir, "edge"),
        EDGE_2: start_edge(procs, workdir, "edge-2", workers=2),
    }
    if with_asyncio:
        proxies[EDGE_ASYNCIO] = start_edge(procs, workdir, "edge-asyncio", loop="asyncio")
    for origin, _ in proxies.values():
        for session, target in ((STATIC_SESSION, static), (WS_SESSION, echo)):
            post_json(f"{origin}/api/routes/{session}", {"target": target}, {"Authorization": f"Bearer {API_TOKEN}"})
    chp, chp_api, chp_pid = start_chp(procs)
    for session, target in ((STATIC_SESSION, static), (WS_SESSION, echo)):
        post_json(f"{chp_api}/api/routes/session/{session}", {"target": target}, {"Authorization": f"token {API_TOKEN}"})
    proxies["configurable-http-proxy"] = (chp, (chp_pid,))

    http = [Target("direct", static + "/style.css", (static_pid,))]
    ws = [Target("direct", f"ws://127.0.0.1:{ws_port}/echo", (echo_pid,))]
    for name, (origin, pids) in proxies.items():
        http.append(Target(name, f"{origin}/session/{STATIC_SESSION}/style.css", pids))
        ws.append(Target(name, f"ws{origin[4:]}/session/{WS_SESSION}/echo", pids))
        if wait_http(http[-1].url, headers={"Cookie": f"edge_session={STATIC_SESSION}"}) != PAYLOAD:
            raise RuntimeError(f"{name} returned a different body")
    return http, ws


def print_report(http: list[HttpResult], ws: list[WsResult], args: argparse.Namespace, load: tuple[float, float]) -> None:
    print(f"\n{os.cpu_count()} cores; 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after the run")
    print(f"\nHTTP: GET of a {len(PAYLOAD)}-byte file from {args.upstream}, wrk -t1 -c{args.connections} -d{args.seconds}s, best of {args.repeat}")
    print(f"{'path':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'errors':>8}{'CPU µs/req':>12}")
    for r in http:
        print(f"{r.name:<26}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.requests:>10}{r.errors:>8}{r.cpu_us:>12.0f}")
    by = {r.name: r for r in http}
    chp, direct = by["configurable-http-proxy"], by["direct"]
    for name in ("edge", EDGE_2):
        edge = by[name]
        print(f"\n{name} / configurable-http-proxy: throughput {edge.rps / chp.rps:.2f}x (target >= 2x), "
              f"CPU per request {edge.cpu_us / chp.cpu_us:.2f}x")
        print(f"{name} p99 {edge.p99_ms:.2f} ms vs configurable-http-proxy p99 {chp.p99_ms:.2f} ms (target: lower)")
        print(f"{name} / direct throughput: {edge.rps / direct.rps:.2f}x")
    if EDGE_ASYNCIO in by:
        other = by[EDGE_ASYNCIO]
        print(f"{EDGE_ASYNCIO} / configurable-http-proxy: throughput {other.rps / chp.rps:.2f}x, "
              f"CPU per request {other.cpu_us / chp.cpu_us:.2f}x")
    print(f"\nWebSocket echo: {args.ws_connections} sockets x {args.ws_messages} round trips of 64 bytes, "
          f"median of {args.ws_repeat} interleaved rounds")
    print(f"{'path':<26}{'msg/s':>9}{'messages':>10}{'CPU µs/msg':>12}  rounds (msg/s)")
    for w in ws:
        rounds = ", ".join(f"{r:.0f}" for r in w.rounds)
        print(f"{w.name:<26}{w.messages_per_second:>9.0f}{w.messages:>10}{w.cpu_us:>12.0f}  {rounds}")
    wby = {w.name: w for w in ws}
    chp_ws = wby["configurable-http-proxy"]
    for name in [n for n in ("edge", EDGE_2, EDGE_ASYNCIO) if n in wby]:
        per_round = [e / c for e, c in zip(wby[name].rounds, chp_ws.rounds)]
        print(f"WebSocket {name} / configurable-http-proxy: {wby[name].messages_per_second / chp_ws.messages_per_second:.2f}x "
              f"(per round {min(per_round):.2f}-{max(per_round):.2f}x; CPU per message {wby[name].cpu_us / chp_ws.cpu_us:.2f}x)")


def benchmark(args: argparse.Namespace) -> int:
    check_tools(args.upstream)
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"benchmark watchdog: stopped after {WATCHDOG_SECONDS} s"))
    signal.alarm(WATCHDOG_SECONDS)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp, ExitStack() as stack:
        procs = Processes(Path(tmp))
        stack.callback(procs.stop_all)
        http_targets, ws_targets = start_servers(procs, Path(tmp), args.asyncio, args.upstream)
        cookie = {"Cookie": f"edge_session={STATIC_SESSION}"}  # what a browser sends after the first page
        for target in http_targets:
            run_wrk(target, connections=args.connections, seconds=1, headers=cookie)  # warm-up
        runs: dict[str, list[HttpResult]] = {t.name: [] for t in http_targets}
        for _ in range(args.repeat):  # rounds interleave the paths, so a busy moment hits all of them
            for target in http_targets:
                runs[target.name].append(run_wrk(target, connections=args.connections, seconds=args.seconds, headers=cookie))
        http = [max(results, key=lambda r: r.rps) for results in runs.values()]
        ws_runs: dict[str, list[WsResult]] = {t.name: [] for t in ws_targets}
        for _ in range(args.ws_repeat):  # interleaved like the HTTP rounds
            for target in ws_targets:
                ws_runs[target.name].append(run_ws_load(target, connections=args.ws_connections, messages=args.ws_messages))
        ws = [median_of(results) for results in ws_runs.values()]
    signal.alarm(0)
    print_report(http, ws, args, (load_before, os.getloadavg()[0]))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--repeat", type=int, default=3, help="wrk runs per path, interleaved (the best counts)")
    parser.add_argument("--ws-connections", type=int, default=8)
    parser.add_argument("--ws-messages", type=int, default=2000, help="round trips per WebSocket")
    parser.add_argument("--ws-repeat", type=int, default=3, help="WebSocket rounds per path, interleaved (the median counts)")
    parser.add_argument("--asyncio", action="store_true", help="also measure the edge on asyncio's event loop (EDGE_EVENT_LOOP=asyncio)")
    parser.add_argument("--upstream", choices=("node", "nginx"), default="node", help="the static upstream (nginx: Debian's)")
    commands = parser.add_subparsers(dest="command")
    echo = commands.add_parser("ws-echo", help=argparse.SUPPRESS)
    echo.add_argument("port", type=int)
    load = commands.add_parser("ws-load", help=argparse.SUPPRESS)
    load.add_argument("url")
    load.add_argument("connections", type=int)
    load.add_argument("messages", type=int)
    args = parser.parse_args()
    if args.command == "ws-echo":
        asyncio.run(ws_echo(args.port))
        return 0
    if args.command == "ws-load":
        print(json.dumps(asyncio.run(ws_load(args.url, args.connections, args.messages))))
        return 0
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
