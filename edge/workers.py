"""More edge processes on one port, so the fast path uses every core.

One Python process proxies a few thousand small requests a second on the
project's machine and uses one core. With ``EDGE_WORKERS=N`` (N > 1) the
edge starts N-1 worker processes (:mod:`edge.worker`) that listen on the same
address (``SO_REUSEPORT``: the kernel spreads new connections over the
processes) and run only the fast path (:mod:`edge.fastpath`). This main
process keeps everything else: the control API, previews, the session
table, idle shutdown, DynamoDB, metrics and the operator page, as nginx's
workers share one configuration and a master keeps the rest.

Each worker has a Unix socket pair to this process (``SOCK_SEQPACKET``: one
message per send, in order):

* main → worker: the settings once, then the ready routes each time the
  session table changes;
* worker → main: a connection the fast path does not take, as its file
  descriptor (``SCM_RIGHTS``) with the bytes already read: this process
  carries on with it as if it had accepted it (so every API call, upgrade
  and error page is answered here);
* worker → main, four times a second: activity per session, requests in
  flight, metrics and the latest proxy log records (for ``/metrics``, idle
  shutdown and the operator page).

Workers write their own proxy log lines to the shared stdout. They are not
started with ``EDGE_FLOW_LOG`` (only this process writes flow files) or
``EDGE_FAST_PATH=0``. A worker that dies is started again (at most
``MAX_RESTARTS`` times a minute); a worker whose main process is gone stops.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import os
import pickle
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from aiohttp import web

from edge import keys, metrics
from edge.exchange import Tally
from edge.health import HEALTH_FIELDS
from edge.idle import IDLE
from edge.routing import RouteState
from edge.settings import Settings

log = logging.getLogger(__name__)

# Message kinds: one byte, then the payload.
SETTINGS, ROUTES, HANDOVER, MORE, TELEMETRY = b"S", b"R", b"H", b"M", b"T"
CHUNK = 64 * 1024  # handed-over bytes per message
# A message must fit the socket's send buffer (about 200 KiB without privileges).
MAX_MESSAGE = 160 * 1024
TELEMETRY_SECONDS = 0.25
MAX_RESTARTS = 5
SEND_TIMEOUT = 2.0


def send(channel: socket.socket, kind: bytes, payload: bytes = b"", fd: int | None = None) -> None:
    """Send one message (with a file descriptor); waits up to SEND_TIMEOUT for room on a full socket."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))] if fd is not None else []
    deadline = time.monotonic() + SEND_TIMEOUT
    while True:
        try:
            channel.sendmsg([kind + payload], ancillary)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the other edge process does not read its channel") from None
            select.select([], [channel], [], left)


def receive(channel: socket.socket) -> list[tuple[bytes, bytes, list[int]]] | None:
    """The messages waiting on a non-blocking channel as (kind, payload, fds); None once it is closed."""
    messages: list[tuple[bytes, bytes, list[int]]] = []
    while True:
        try:
            data, ancillary, _flags, _addr = channel.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(array.array("i").itemsize))
        except BlockingIOError:
            return messages
        except OSError:
            return None if not messages else messages
        if not data:
            return None if not messages else messages
        fds: list[int] = []
        for level, kind, cmsg in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(cmsg[: len(cmsg) - len(cmsg) % received.itemsize])
                fds.extend(received)
        messages.append((data[:1], data[1:], fds))


def hand_over(channel: socket.socket, sock: socket.socket, data: bytes) -> None:
    """Send a client connection and the bytes read from it to the main process."""
    first, rest = data[:CHUNK], data[CHUNK:]
    send(channel, HANDOVER, (b"1" if not rest else b"0") + first, fd=sock.fileno())
    while rest:
        part, rest = rest[:CHUNK], rest[CHUNK:]
        send(channel, MORE, (b"1" if not rest else b"0") + part)


Adopt = Callable[[socket.socket, bytes], None]


@dataclass
class WorkerHandle:
    """One worker process, as the main process sees it."""

    number: int
    process: asyncio.subprocess.Process
    channel: socket.socket
    stats: dict[str, Any] = field(default_factory=dict)
    in_flight: int = 0
    arriving: tuple[socket.socket, list[bytes]] | None = None  # a handover whose bytes are still coming


class WorkerPool:
    """The worker processes of one edge: started after the main process listens, stopped with it."""

    def __init__(self, app: web.Application, count: int) -> None:
        self.app = app
        self.count = count
        self.workers: dict[int, WorkerHandle] = {}
        self.stopping = False
        self._adopt: Adopt | None = None
        self._address: tuple[str, int] = ("", 0)
        self._restarts: list[float] = []
        self._watchers: set[asyncio.Task] = set()

    async def start(self, host: str, port: int, adopt: Adopt) -> None:
        self._address = (host, port)
        self._adopt = adopt
        for number in range(1, self.count):
            await self._spawn(number)
        log.info("%d edge worker process(es) serve %s:%d with this one", self.count - 1, host, port)

    async def _spawn(self, number: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge.worker", str(theirs.fileno()), self.app[keys.SETTINGS].event_loop,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = WorkerHandle(number, process, ours)
        self.workers[number] = worker
        settings: Settings = self.app[keys.SETTINGS]
        # What a worker needs; no tokens (it never calls git or checks the API token).
        plain = replace(settings, github_token=None, api_token=None, claude_env=())
        host, port = self._address
        send(ours, SETTINGS, pickle.dumps((plain, host, port, number)))
        self._send_routes(worker)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable, worker)
        watcher = asyncio.ensure_future(self._watch(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, worker: WorkerHandle) -> None:
        code = await worker.process.wait()
        self._forget(worker)
        if self.stopping:
            return
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            log.error("edge worker %d exited (status %s); too many restarts, not starting it again", worker.number, code)
            return
        log.error("edge worker %d exited (status %s); starting it again", worker.number, code)
        await self._spawn(worker.number)

    def _forget(self, worker: WorkerHandle) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        try:
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())
        except (ValueError, RuntimeError):
            pass
        worker.channel.close()
        if worker.arriving is not None:
            worker.arriving[0].close()

    # -- main → workers ----------------------------------------------------

    def routes_changed(self) -> None:
        for worker in list(self.workers.values()):
            self._send_routes(worker)

    def _send_routes(self, worker: WorkerHandle) -> None:
        table = self.app[keys.SESSIONS]
        ready = [
            [route.session_id, str(route.target)]
            for route in table.routes.values()
            if route.state is RouteState.READY and route.target is not None
        ]
        try:
            send(worker.channel, ROUTES, json.dumps(ready).encode())
        except OSError as exc:
            log.error("could not send routes to edge worker %d (%s): stopping it", worker.number, exc)
            worker.process.kill()

    # -- workers → main ----------------------------------------------------

    def _readable(self, worker: WorkerHandle) -> None:
        messages = receive(worker.channel)
        for kind, payload, fds in messages or ():
            try:
                self._handle(worker, kind, payload, fds)
            except Exception:  # one bad message must not take the main process down
                log.exception("edge worker %d sent a message that could not be handled", worker.number)
        if messages is None:
            asyncio.get_running_loop().remove_reader(worker.channel.fileno())

    def _handle(self, worker: WorkerHandle, kind: bytes, payload: bytes, fds: list[int]) -> None:
        if kind == HANDOVER and fds:
            if worker.arriving is not None:
                worker.arriving[0].close()
            worker.arriving = (socket.socket(fileno=fds[0]), [payload[1:]])
            for extra in fds[1:]:
                os.close(extra)
        elif kind == MORE and worker.arriving is not None:
            worker.arriving[1].append(payload[1:])
        elif kind == TELEMETRY:
            self._apply(worker, json.loads(payload))
            return
        else:
            for fd in fds:
                os.close(fd)
            return
        if payload[:1] == b"1" and worker.arriving is not None:  # the last part: carry on with the connection
            sock, parts = worker.arriving
            worker.arriving = None
            sock.setblocking(False)
            assert self._adopt is not None
            self._adopt(sock, b"".join(parts))

    def _apply(self, worker: WorkerHandle, report: dict) -> None:
        """A worker's telemetry: fold it into this process's activity, metrics and recent records."""
        table = self.app[keys.SESSIONS]
        for session_id, at in report["activity"].items():
            table.last_activity[session_id] = max(table.last_activity.get(session_id, 0.0), at)
        watch = self.app.get(IDLE)
        if watch is not None and report["lastRequest"]:
            watch.last_request = max(watch.last_request, report["lastRequest"])
        worker.in_flight = report["inFlight"]
        metrics.add_tally(self.app, Tally.from_json(report["metrics"]))
        recent = self.app[keys.PROXY_LOG].recent
        for session_id, encoded in report["records"]:
            recent.encoded_done(session_id, encoded)
        worker.stats = {"proxied": report["proxied"], "handedOver": report["handedOver"], "routes": report["routes"]}

    # -- reporting and stopping ----------------------------------------------

    def health(self) -> list[dict]:
        return [
            {"worker": w.number, "pid": w.process.pid, "inFlight": w.in_flight, **w.stats}
            for w in sorted(self.workers.values(), key=lambda w: w.number)
        ]

    def busy(self) -> bool:
        return any(w.in_flight for w in self.workers.values())

    async def begin_stop(self, app: web.Application | None = None) -> None:
        """``on_shutdown``: the workers stop listening and finish what they answer (SIGTERM)."""
        self.stopping = True
        for worker in self.workers.values():
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the workers to exit, then kill what is left."""
        self.stopping = True
        processes = [w.process for w in self.workers.values()]
        if processes:
            _, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in processes], timeout=max(timeout, 0.5))
            for process in processes:
                if process.returncode is None:
                    log.warning("edge worker %d did not stop in time: killing it", process.pid)
                    process.kill()
            for task in pending:
                await task
        for watcher in list(self._watchers):
            await watcher
        for worker in list(self.workers.values()):
            self._forget(worker)

    def kill_now(self) -> None:
        for worker in self.workers.values():
            if worker.process.returncode is None:
                worker.process.kill()


WORKERS = web.AppKey("workers", WorkerPool)


def setup(app: web.Application, count: int) -> WorkerPool:
    """Create the app's worker pool (``edge.server.start_edge`` starts it once the port is bound)."""
    from edge import stopping

    pool = app[WORKERS] = WorkerPool(app, count)
    app[keys.SESSIONS].on_change(pool.routes_changed)
    watch = app.get(IDLE)
    if watch is not None:
        watch.busy_checks["workers"] = pool.busy
    app.setdefault(HEALTH_FIELDS, {})["workers"] = pool.health
    app.on_shutdown.append(pool.begin_stop)
    stopping.add_drain(app, pool.drain)
    return pool
