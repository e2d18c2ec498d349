"""An edge worker process: the fast path on one more core (started by :mod:`edge.workers`).

``python -m edge.worker <fd> <loop>``: ``fd`` is its end of the socket pair to the
main process, which sends the settings first; ``loop`` is the main process's
``EDGE_EVENT_LOOP`` (the loop is chosen before the settings arrive). The worker listens on the
edge's address with ``SO_REUSEPORT``, answers plain GETs to ready previews
(:mod:`edge.fastpath`) and passes every other connection to the main process.
It stops on SIGTERM (after the answers in progress, within
``EDGE_DRAIN_SECONDS``), or when the main process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import pickle
import signal
import socket
import sys

from aiohttp import web
from yarl import URL

from edge import eventloop, keys, workers
from edge.connguard import ConnectionGuard
from edge.exchange import Tally
from edge.fastpath import FastPath, FrontProtocol
from edge.hostpolicy import HostPolicy
from edge.idle import IDLE, IdleWatch
from edge.proxylog import JsonLines, ProxyLog
from edge.routing import Route, SessionTable
from edge.settings import Settings

log = logging.getLogger(__name__)
MAX_RECORDS = 50  # proxy records per report (the operator page shows the latest)


class WorkerServer:
    """What runs inside a worker process: the fast path on its share of the connections, reporting to the main process."""

    def __init__(self, channel: socket.socket, settings: Settings) -> None:
        self.channel = channel
        self.settings = settings
        self.app = app = web.Application()
        app[keys.SETTINGS] = settings
        app[keys.SESSIONS] = SessionTable()
        app[keys.HOSTS] = HostPolicy(settings.public_hosts, settings.session_host_patterns)
        app[keys.PROXY_LOG] = ProxyLog([JsonLines()], recent=MAX_RECORDS)
        app[IDLE] = IdleWatch()
        self.fast = FastPath(app)  # no metrics sink: each report takes the tally
        self.guard = ConnectionGuard.from_settings(settings)
        self.stop = asyncio.Event()
        self._reported: dict[str, float] = {}

    def front(self) -> FrontProtocol:
        return FrontProtocol(self.fast, self.guard, self.pass_on)

    def pass_on(self, transport: asyncio.Transport, data: bytes) -> None:
        """Not for the fast path: the main process carries on with the connection.

        An answer still leaving this process's buffer goes first (a client that
        pipelines), or the two processes' bytes would mix on the connection.
        """
        if transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.pause_reading()
            asyncio.get_running_loop().call_later(0.005, self.pass_on, transport, data)
            return
        sock = transport.get_extra_info("socket")
        try:
            workers.hand_over(self.channel, sock, data)
        except OSError as exc:
            log.error("could not pass a connection to the main edge process: %s", exc)
        transport.close()  # this process's descriptor only: the connection lives on in the main process

    def readable(self) -> None:
        messages = workers.receive(self.channel)
        if messages is None:  # the main process is gone
            self.stop.set()
            return
        for kind, payload, _fds in messages:
            if kind == workers.ROUTES:
                table = self.app[keys.SESSIONS]
                ready = {session_id: URL(target) for session_id, target in json.loads(payload)}
                for session_id in [s for s in table.routes if s not in ready]:
                    del table.routes[session_id]
                for session_id, target in ready.items():
                    if (route := table.routes.get(session_id)) is None or route.target != target:
                        table.routes[session_id] = Route(session_id, target, source="main")

    def report(self) -> None:
        table = self.app[keys.SESSIONS]
        activity = {s: t for s, t in table.last_activity.items() if self._reported.get(s) != t}
        self._reported.update(activity)
        watch = self.app[IDLE]
        tally, self.fast.tally = self.fast.tally, Tally()
        payload = {
            "activity": activity,
            "lastRequest": watch.last_request,
            "inFlight": watch.in_flight,
            "metrics": tally.as_json(),
            "records": self.app[keys.PROXY_LOG].recent.take(),
            "proxied": self.fast.proxied,
            "handedOver": self.fast.handed_over,
            "routes": len(table.routes),
        }
        message = json.dumps(payload).encode()
        while len(message) > workers.MAX_MESSAGE - 1 and payload["records"]:  # huge headers: fewer records
            payload["records"] = payload["records"][len(payload["records"]) // 2 + 1 :]
            message = json.dumps(payload).encode()
        try:
            workers.send(self.channel, workers.TELEMETRY, message)
        except OSError as exc:
            log.error("could not report to the main edge process (%s): stopping", exc)
            self.stop.set()

    async def run(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.front, host, port, reuse_port=True, backlog=1024)
        loop.add_reader(self.channel.fileno(), self.readable)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)  # the main process decides when to stop
        gc.freeze()
        async with contextlib.asynccontextmanager(self.fast.sweep)(self.app):
            reporting = asyncio.ensure_future(self._report_forever())
            await self.stop.wait()
            server.close()
            self.fast.begin_stop()
            await self.fast.drain(self.settings.drain_seconds)
            reporting.cancel()
        self.app[keys.PROXY_LOG].close()
        self.report()

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(workers.TELEMETRY_SECONDS)
            self.report()


async def main_async(fd: int) -> None:
    channel = socket.socket(fileno=fd)
    first = await asyncio.get_running_loop().run_in_executor(None, channel.recv, 1 << 20)
    if first[:1] != workers.SETTINGS:
        raise SystemExit("edge worker: expected the settings first")
    settings, host, port, number = pickle.loads(first[1:])
    channel.setblocking(False)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[worker {number}]: %(message)s")
    log.info("edge worker %d serving %s:%d (event loop %s)", number, host, port, eventloop.running_loop())
    await WorkerServer(channel, settings).run(host, port)


def main(argv: list[str]) -> int:
    loop = argv[1] if len(argv) == 2 else eventloop.ASYNCIO
    if len(argv) not in (1, 2) or not argv[0].isdigit() or loop not in eventloop.LOOPS:
        print(f"usage: python -m edge.worker <fd> [{'|'.join(eventloop.LOOPS)}] (started by the edge itself)", file=sys.stderr)
        return 2
    eventloop.run(main_async(int(argv[0])), loop)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
