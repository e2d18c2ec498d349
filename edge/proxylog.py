"""The proxy log: one JSON line per proxied request or WebSocket session.

Addons receive each finished :class:`~edge.flow.ProxyFlow` through their
``flow_done`` hook, as mitmproxy's addons receive their flows. Every addon
that writes a flow anywhere (stdout, memory, a flow file) passes headers and
URLs through :mod:`edge.redact`; the flow's header changes are redacted as
they are recorded.

Finished flows reach the addons in batches, at most ``PUBLISH_DELAY`` after
they end (as nginx's ``access_log ... buffer= flush=``), not one by one: a
page load is a burst of 30-100 requests, and encoding and writing each line
as its request ended cost the edge a third of its CPU per proxied request,
spent while the next requests of the burst waited. Whoever reads the recent
records (the operator page, a worker's report, tests) gets the pending ones
first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections import deque
from typing import IO, Callable, Iterator, Protocol

import orjson

from edge.flow import ProxyFlow
from edge.redact import redact_query

log = logging.getLogger(__name__)
# POSIX: writes of up to this many bytes to a pipe are atomic (counted in characters: the log is nearly all ASCII).
PIPE_BUF = 4096
# How long a finished flow may wait for its batch to be logged, and how many may wait.
PUBLISH_DELAY = 0.1
MAX_PENDING = 256
_encode_slowly = json.JSONEncoder(separators=(",", ":"), default=dataclasses.asdict).encode


def encode_record(record: dict) -> str:
    """Compact JSON; orjson (ten times faster on these records) unless a value holds undecodable bytes."""
    try:
        return orjson.dumps(record).decode()
    except TypeError:  # orjson.JSONEncodeError: a header value with bytes that are not UTF-8 (surrogates)
        return _encode_slowly(record)


class Addon(Protocol):
    """Takes each finished flow (the flow file)."""

    def flow_done(self, flow: ProxyFlow) -> None: ...

    def close(self) -> None: ...


class RecordAddon(Protocol):
    """Takes each flow's JSON record, encoded once for all such addons (the log lines, the ring)."""

    def encoded_done(self, session_id: str, encoded: str) -> None: ...

    def close(self) -> None: ...


def flow_record(flow: ProxyFlow) -> dict:
    """The JSON form of a flow, with secrets redacted."""
    return {
        "time": round(flow.started, 3),
        "id": flow.id,
        "session": flow.session_id,
        "match": flow.match,
        "method": flow.method,
        "path": redact_query(flow.raw_path),
        "upstream": redact_query(flow.upstream_url),
        "status": flow.status,
        "websocket": flow.websocket,
        "bytesIn": flow.bytes_in,
        "bytesOut": flow.bytes_out,
        "durationMs": flow.duration_ms,
        "clientHost": flow.client_headers.get("Host"),
        "upstreamHost": flow.upstream_headers.get("Host"),
        "changes": flow.changes,  # dataclasses, redacted when recorded: encoded as objects
        **({"messagesIn": flow.messages_in, "messagesOut": flow.messages_out, "closeCode": flow.close_code} if flow.websocket else {}),
        **({"error": flow.error} if flow.error else {}),
    }


class JsonLines:
    """Writes each flow as one JSON line (stdout by default, for CloudWatch).

    Lines finished in one turn of the event loop leave in one write at the
    end of that turn (a busy edge finishes several requests per turn), not
    one write and flush per line; without a running loop each line is written at once.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._pending: list[str] = []

    def encoded_done(self, session_id: str, encoded: str) -> None:
        # The record's own encoding with "type" spliced in first: no copy of the record.
        self._queue('{"type":"proxy",' + encoded[1:] + "\n")

    def event(self, kind: str, record: dict) -> None:
        """Another kind of line (``api``: edge.apilog), written the same way."""
        self._queue(encode_record({"type": kind, **record}) + "\n")

    def _queue(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) > 1:
            return  # a write is already due
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        try:
            for chunk in _chunks(lines):
                self.stream.write(chunk)
                self.stream.flush()
        except (OSError, ValueError):
            log.exception("proxy log write failed")

    def close(self) -> None:
        self.flush()


def _chunks(lines: list[str]) -> Iterator[str]:
    """Whole lines in writes of at most PIPE_BUF bytes, which a pipe never splits: with edge
    workers (edge.workers) several processes write to the same stdout."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > PIPE_BUF:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield "".join(chunk)


class Recent:
    """Keeps the last records in memory (for the operator page and tests).

    They are kept as JSON text and decoded when asked for: hundreds of
    records alive as dicts cost the garbage collector more, per request, than
    the rest of the proxy log together.
    """

    def __init__(self, size: int = 500, before_read: Callable[[], None] = lambda: None) -> None:
        self._encoded: deque[tuple[str, str]] = deque(maxlen=size)
        self._before_read = before_read  # the proxy log's publish: flows that ended are kept before a read

    def encoded_done(self, session_id: str, encoded: str) -> None:
        self._encoded.append((session_id, encoded))

    def take(self) -> list[tuple[str, str]]:
        """The kept records as (session, JSON) pairs, forgetting them (a worker sends them on)."""
        self._before_read()
        taken = list(self._encoded)
        self._encoded.clear()
        return taken

    @property
    def records(self) -> list[dict]:
        """Every record kept, oldest first."""
        self._before_read()
        return [json.loads(encoded) for _, encoded in self._encoded]

    def last(self, limit: int) -> list[dict]:
        """The last ``limit`` records, oldest first."""
        if limit <= 0:
            return []
        self._before_read()
        return [json.loads(encoded) for _, encoded in list(self._encoded)[-limit:]]

    def for_session(self, session_id: str, limit: int = 100) -> list[dict]:
        """The last ``limit`` records of one session, oldest first."""
        found: list[str] = []
        if limit <= 0:
            return []
        self._before_read()
        for session, encoded in reversed(self._encoded):
            if session == session_id:
                found.append(encoded)
                if len(found) >= limit:
                    break
        return [json.loads(encoded) for encoded in reversed(found)]

    def close(self) -> None:
        pass


class ProxyLog:
    """Hands each finished flow to every addon; a failing addon never breaks a request."""

    def __init__(self, addons: list[Addon | RecordAddon] | None = None, *, recent: int = 500) -> None:
        self.recent = Recent(recent, before_read=self.publish)
        self.addons: list[Addon | RecordAddon] = [self.recent, *(addons or [])]
        # Sorted once by what each takes; the record is built and encoded once per flow.
        self._record_addons = [a for a in self.addons if hasattr(a, "encoded_done")]
        self._flow_addons = [a for a in self.addons if not hasattr(a, "encoded_done")]
        self._pending: list[ProxyFlow] = []
        self._timer: asyncio.TimerHandle | None = None

    def flow_done(self, flow: ProxyFlow) -> None:
        """Take a finished flow: the addons get it with its batch (at once without a running loop)."""
        self._pending.append(flow)
        if self._timer is not None and len(self._pending) < MAX_PENDING:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or len(self._pending) >= MAX_PENDING:
            self.publish()
        else:
            self._timer = loop.call_later(PUBLISH_DELAY, self.publish)

    def publish(self) -> None:
        """Hand the flows that ended since the last batch to every addon, in the order they ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        flows, self._pending = self._pending, []
        for flow in flows:
            self._publish(flow)

    def _publish(self, flow: ProxyFlow) -> None:
        encoded = encode_record(flow_record(flow))
        for addon in self._record_addons:
            try:
                addon.encoded_done(flow.session_id, encoded)  # type: ignore[union-attr]
            except Exception:  # an addon's bug must not break the proxy
                log.exception("proxy log addon %r failed", addon)
        for addon in self._flow_addons:
            try:
                addon.flow_done(flow)  # type: ignore[union-attr]
            except Exception:
                log.exception("proxy log addon %r failed", addon)

    def event(self, kind: str, record: dict) -> None:
        """A line of another kind (``api``) for the addons that write lines, after the flows before it; never breaks a request."""
        self.publish()
        for addon in self._record_addons:
            write = getattr(addon, "event", None)
            if write is None:
                continue
            try:
                write(kind, record)
            except Exception:
                log.exception("proxy log addon %r failed", addon)

    def close(self) -> None:
        self.publish()
        for addon in self.addons:
            try:
                addon.close()
            except Exception:  # one addon failing to close must not keep the others open
                log.exception("proxy log addon %r failed to close", addon)
