"""The edge's traffic as a mitmproxy flow file (``EDGE_FLOW_LOG``), for header debugging.

Each exchange is written as two mitmproxy flows, one after the other, so that
mitmweb and ``mitmdump -nr`` show both sides with their whole headers:

1. **client side**: the request as the browser sent it (public Host, the
   ``/session/<id>`` prefix) and the response as the browser got it;
2. **upstream side**: the request as the preview server got it (Host
   rewritten, ``X-Forwarded-*`` added, prefix stripped) and the response as
   the upstream sent it, before the edge changed it.

The comment of each flow starts with its side (``client side`` or ``upstream
side``; filter with ``~comment "^upstream side"``), its session and the edge's flow id (the JSON log's ``id``, and the
client-side flow's own id); the client side's comment also lists every header
change. Bodies are not captured, since the proxy streams them: a message with
a body has mitmproxy's "content missing", its size is in the comment.

Secrets are redacted by :mod:`edge.redact`'s rule before anything is
written. The event loop only puts the finished flow on a bounded queue; a
writer process converts, serializes and appends in batches (one ``write`` per
batch, so the file is flushed whenever the queue runs dry, and on close). A
failing disk drops flows and logs, it never fails a request; a half-written
batch is cut off again so the file stays readable.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import pickle
import queue
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import AsyncIterator

import anyio
from mitmproxy import connection
from mitmproxy.flow import Error
from mitmproxy.http import Headers, HTTPFlow, Request, Response
from mitmproxy.io import FlowWriter
from mitmproxy.net.http.status_codes import RESPONSES
from mitmproxy.websocket import WebSocketData
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from core import processes
from edge.flow import ProxyFlow
from edge.redact import redact_headers, redact_query

log = logging.getLogger(__name__)

CLIENT_SIDE = "client side"
UPSTREAM_SIDE = "upstream side"
_STOP = object()
_BATCH = 256
_RESTART_AFTER = 5.0  # seconds between attempts to (re)start a failed writer process
MAX_BYTES = 100 * 1024 * 1024  # per file; the one before is kept as <name>.1


def _headers(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> Headers:
    return Headers(
        [(name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")) for name, value in redact_headers(headers.items())]
    )


def _body(size: int) -> bytes | None:
    """Empty when there was no body; None ("content missing") when there was one, not captured."""
    return b"" if size == 0 else None


def _reason(flow: ProxyFlow) -> str:
    return flow.reason or RESPONSES.get(flow.status or 0, "")


def _summary(flow: ProxyFlow) -> str:
    if flow.websocket:
        return (
            f"WebSocket messages: in {flow.messages_in} ({flow.bytes_in} B), out {flow.messages_out} ({flow.bytes_out} B), "
            f"not captured; close code {flow.close_code} | {flow.duration_ms} ms"
        )
    return f"body bytes: in {flow.bytes_in}, out {flow.bytes_out} (not captured) | {flow.duration_ms} ms"


def _change(direction: str, action: str, name: str, old: str | None, new: str | None) -> str:
    value = f"{old} -> {new}" if action == "rewritten" else (new if action == "added" else old)
    return f"{direction}: {action} {name}: {value}"


def _comment(flow: ProxyFlow, side: str) -> str:
    """One paragraph (mitmweb shows comments unwrapped), its parts separated by " | "."""
    parts = [f"{side}; session={flow.session_id}; flow={flow.id}"]
    if side == CLIENT_SIDE:
        parts.append("the next flow is what the preview server got")
        parts.extend(_change(c.direction, c.action, c.name, c.old, c.new) for c in flow.changes)
    else:
        parts.append("the previous flow is what the browser sent, and lists the edge's header changes")
    parts.append(_summary(flow))
    if flow.error:
        parts.append(f"error: {flow.error}")
    return " | ".join(parts)


def _finish(mflow: HTTPFlow, flow: ProxyFlow, side: str, response: Response | None) -> HTTPFlow:
    ended = flow.ended or flow.started
    mflow.response = response
    if flow.websocket and response is not None and response.status_code == 101:
        mflow.websocket = WebSocketData(close_code=flow.close_code, timestamp_end=ended)
    if flow.error:
        mflow.error = Error(flow.error, ended)
    mflow.comment = _comment(flow, side)
    mflow.metadata["edge"] = {"side": side, "flow": flow.id, "session": flow.session_id, "bytesIn": flow.bytes_in, "bytesOut": flow.bytes_out}
    mflow.timestamp_created = flow.started
    return mflow


def mitmproxy_flows(flow: ProxyFlow) -> list[HTTPFlow]:
    """The client-side flow and (when the edge got as far as the upstream) the upstream-side flow."""
    upstream = URL(flow.upstream_url, encoded=True) if flow.upstream_url else None
    server = connection.Server(address=(upstream.host or "", upstream.port or 0) if upstream else None)
    flows = [_client_side(flow, server)]
    if upstream is not None:
        flows.append(_upstream_side(flow, server, upstream))
    return flows


def _answered_at(flow: ProxyFlow) -> float:
    """The edge answers a WebSocket handshake at once; an HTTP response ends when its body has gone out."""
    return flow.started if flow.websocket else (flow.ended or flow.started)


def _client_side(flow: ProxyFlow, server: connection.Server) -> HTTPFlow:
    """The request as the browser sent it, the response as the browser got it."""
    scheme = flow.upstream_headers.get("X-Forwarded-Proto") or "http"  # the public scheme, as the edge saw it
    try:
        public = URL(f"{scheme}://{flow.client_headers.get('Host', '')}")
        host, port = public.host or "", public.port or 0
    except ValueError:
        host, port = "", 0
    client = connection.Client(peername=(flow.client_addr, 0), sockname=(host, port), timestamp_start=flow.started)
    mflow = HTTPFlow(client, server)
    mflow.id = flow.id
    mflow.request = Request(
        host, port, flow.method, scheme, b"", redact_query(flow.raw_path), flow.http_version,
        _headers(flow.client_headers), _body(0 if flow.websocket else flow.bytes_in), None, flow.started, flow.started,
    )  # fmt: skip
    response = None
    if flow.status is not None:
        at = _answered_at(flow)
        response = Response(
            flow.http_version, flow.status, _reason(flow), _headers(flow.response_headers),
            _body(0 if flow.websocket else flow.bytes_out), None, at, at,
        )  # fmt: skip
    return _finish(mflow, flow, CLIENT_SIDE, response)


def _upstream_side(flow: ProxyFlow, server: connection.Server, upstream: URL) -> HTTPFlow:
    """The request as the preview server got it, the response as it sent it (none if it never answered)."""
    edge = connection.Client(peername=("edge", 0), sockname=("edge", 0), timestamp_start=flow.started)
    mflow = HTTPFlow(edge, server)
    mflow.request = Request(
        upstream.host or "", upstream.port or 0, flow.method, "http", b"", redact_query(upstream.raw_path_qs), "HTTP/1.1",
        _headers(flow.upstream_headers), _body(0 if flow.websocket else flow.bytes_in), None, flow.started, flow.started,
    )  # fmt: skip
    response = None
    if flow.upstream_answered and flow.status is not None:
        at = _answered_at(flow)
        response = Response(
            "HTTP/1.1", flow.status, _reason(flow), _headers(flow.upstream_response_headers),
            _body(0 if flow.websocket else flow.bytes_out), None, at, at,
        )  # fmt: skip
    return _finish(mflow, flow, UPSTREAM_SIDE, response)


class FlowFile:
    """A proxy log addon appending every flow to a mitmproxy flow file, off the event loop.

    Converting and serializing a flow with mitmproxy's classes costs about a
    millisecond of CPU per exchange: in a thread it would hold the GIL the
    event loop needs, so a child process (``python -m edge.flowfile PATH``)
    does it. The event loop only queues the flow; a thread here pickles
    batches to the child and reads back how many it wrote.
    """

    def __init__(self, path: Path | str, *, max_bytes: int = MAX_BYTES, max_pending: int = 2000) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.written = 0  # exchanges on disk
        self.dropped = 0  # exchanges lost: queue full, writer process gone, or disk failing
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._child: processes.Child | None = None
        self._replies: AsyncIterator[bytes] | None = None  # the writer's "written dropped" lines
        self._next_start = 0.0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edge-flowfile", daemon=True)
        self._thread.start()

    def flow_done(self, flow: ProxyFlow) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(flow)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("flow file %s is behind; %d exchanges dropped so far", self.path, self.dropped)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything handed over so far is written (blocks: call it off the event loop)."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending, then stop the writer; bounded, so a stuck disk cannot hold up shutdown."""
        if self._closed:
            return
        self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("flow file %s: writer stuck, stopping it; %d exchanges not written", self.path, self._queue.qsize())
            child = self._child
            if child is not None:
                child.kill_now()
            self._thread.join(timeout)

    def _run(self) -> None:
        # The writer process is a core.processes child like every other, driven by this thread's own event loop.
        with asyncio.Runner() as runner:
            while True:
                items = [self._queue.get()]
                while len(items) < _BATCH:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                flows = [item for item in items if isinstance(item, ProxyFlow)]
                if flows:
                    runner.run(self._deliver(flows))
                for item in items:
                    if isinstance(item, threading.Event):
                        item.set()
                if _STOP in items:
                    runner.run(self._stop_child())
                    return

    async def _deliver(self, flows: list[ProxyFlow]) -> None:
        child = await self._running_child()
        reply = b""
        if child is not None:
            assert child.stdin is not None and self._replies is not None
            try:
                await child.stdin.send(pickle.dumps([_portable(flow) for flow in flows], pickle.HIGHEST_PROTOCOL))
                reply = await anext(self._replies, b"")
            except Exception as exc:  # a dead pipe (or an unpicklable flow): this batch is lost, not the writer
                log.error("flow file %s: could not hand flows to the writer process (%r)", self.path, exc)
        try:
            written, dropped = (int(n) for n in reply.split())
        except ValueError:
            self.dropped += len(flows)
            if child is not None:
                await self._child_failed(child)
            return
        self.written += written
        self.dropped += dropped

    async def _running_child(self) -> processes.Child | None:
        if self._child is not None and _exists(self._child):
            return self._child
        if time.monotonic() < self._next_start:
            return None
        try:
            self._child = await processes.start(
                [sys.executable, "-m", "edge.flowfile", str(self.path), str(self.max_bytes)],
                env=_child_env(),
                stdin=processes.PIPE,
                stderr=None,  # the writer's own log lines go where the edge's go
            )
            assert self._child.stdout is not None
            self._replies = self._child.lines(self._child.stdout)
        except OSError as exc:
            log.error("flow file %s: cannot start the writer process (%s)", self.path, exc)
            self._child, self._next_start = None, time.monotonic() + _RESTART_AFTER
        return self._child

    async def _child_failed(self, child: processes.Child) -> None:
        log.error("flow file %s: writer process failed (exit %s); restarting it", self.path, child.returncode)
        await child.stop(grace=0)
        self._child, self._replies, self._next_start = None, None, time.monotonic() + _RESTART_AFTER

    async def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        assert child.stdin is not None
        await child.stdin.aclose()  # end of input: the writer closes the file and exits
        with anyio.move_on_after(5):
            await child.wait()
        await child.stop(grace=0)


def _exists(child: processes.Child) -> bool:
    """Whether the writer process is still there; its returncode may not know yet.

    This thread's event loop runs only while a batch is handed over, so news
    of an exit in between (reaped at once by asyncio's child watcher thread)
    is still queued when the next batch comes; the process table is not late.
    """
    if child.returncode is not None:
        return False
    try:
        os.kill(child.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _portable(flow: ProxyFlow) -> ProxyFlow:
    """The flow with plain header copies (aiohttp's read-only header views cannot be pickled)."""
    return replace(
        flow,
        client_headers=CIMultiDict(flow.client_headers),
        upstream_headers=CIMultiDict(flow.upstream_headers),
        upstream_response_headers=CIMultiDict(flow.upstream_response_headers),
        response_headers=CIMultiDict(flow.response_headers),
    )


def _child_env() -> dict[str, str]:
    """Only what the writer needs to import this module: none of the edge's secrets."""
    return {"PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}


class _Appender:
    """The writer process's file: one ``write`` per batch; a half-written batch is cut off again.

    A file that would grow past ``max_bytes`` is renamed to ``<name>.1`` (replacing
    the previous one) and a new file begun, so the log never takes more than
    about twice ``max_bytes`` of the disk the workspaces live on.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._failing = False

    def write(self, flows: list[ProxyFlow]) -> tuple[int, int]:
        """Append the batch; return (exchanges written, exchanges dropped)."""
        buffer = io.BytesIO()
        writer = FlowWriter(buffer)
        converted = 0
        for flow in flows:
            try:
                for mflow in mitmproxy_flows(flow):
                    writer.add(mflow)
                converted += 1
            except Exception:  # a conversion bug loses one flow, not the writer
                log.exception("flow file: could not convert flow %s", flow.id)
        start = None
        try:
            data = buffer.getvalue()
            start = self._open_for(len(data))
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._forget_partial(start)
            if not self._failing:
                log.error("flow file %s: write failed (%s); dropping flows until it works again", self.path, exc)
            self._failing = True
            return 0, len(flows)
        if self._failing:
            log.warning("flow file %s: writing again", self.path)
            self._failing = False
        return converted, len(flows) - converted

    def _open_for(self, size: int) -> int | None:
        """Open (or rotate) the file for a batch of ``size`` bytes; return where the batch starts."""
        if self._fd is None:
            self._fd = _open(self.path)
        start = _end_of(self._fd)
        if start and start + size > self.max_bytes:
            self.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._fd = _open(self.path)
            start = 0
        return start

    def _forget_partial(self, start: int | None) -> None:
        """Cut a half-written batch off (a torn flow would end every reader there); reopen next time."""
        if self._fd is None:
            return
        try:
            if start is not None:
                os.ftruncate(self._fd, start)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _open(path: Path) -> int:
    """Append-only, readable by the edge's user alone (headers name clients and sessions)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _end_of(fd: int) -> int | None:
    """Where this batch starts, to cut it off if it fails half-way (None for a pipe)."""
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        return None


def writer_main(path: str, max_bytes: int) -> None:
    """The writer process: batches of pickled flows in on stdin, "written dropped" lines out on stdout."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the edge decides when to stop: it closes stdin
    appender = _Appender(Path(path), max_bytes)
    source, replies = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            try:
                flows = pickle.load(source)
            except EOFError:
                return
            written, dropped = appender.write(flows)
            replies.write(f"{written} {dropped}\n".encode())
            replies.flush()
    finally:
        appender.close()


if __name__ == "__main__":
    writer_main(sys.argv[1], int(sys.argv[2]))
