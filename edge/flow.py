"""The record of one proxied exchange, in the manner of mitmproxy's flow object.

The proxy fills a :class:`ProxyFlow` as the exchange goes on (the request as
the client sent it, the request as the upstream got it, each header change,
the response, byte counts); the proxy log's addons read it when it is done.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from enum import Enum

from multidict import CIMultiDict, CIMultiDictProxy

from edge.redact import redact_header


@dataclass
class HeaderChange:
    """One header the edge added, removed or rewrote, on one side of the exchange.

    Values are kept redacted (:mod:`edge.redact`): a change exists to be shown.
    A plain dataclass: cheap to make, and orjson writes it as a JSON object
    (ten times faster than a slotted one, which it reads field by field).
    """

    direction: str  # "request" (toward the upstream) or "response" (toward the client)
    action: str  # "added", "removed" or "rewritten"
    name: str
    old: str | None = None
    new: str | None = None


class UpstreamError(str, Enum):
    """How an upstream failed, set where it happens (``edge_upstream_errors_total{kind}``)."""

    CONNECT = "connect"  # could not connect
    TIMEOUT = "timeout"  # no response head (or WebSocket handshake) in EDGE_FIRST_BYTE_TIMEOUT
    RESET = "reset"  # the connection broke: before the head, mid-body, or a WebSocket without a close frame
    HANDSHAKE = "handshake"  # refused a WebSocket


Headers = CIMultiDict[str] | CIMultiDictProxy[str]
# Until the exchange gets that far (read-only, so one instance serves every flow).
NO_HEADERS: Headers = CIMultiDictProxy(CIMultiDict())


def new_flow_id() -> str:
    """A random (version 4) UUID, from Python's generator: a flow id names, it guards nothing,
    and ``uuid.uuid4()`` costs a system call per request."""
    digits = f"{random.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62) | (0x4 << 76) | (0x2 << 62):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


@dataclass
class ProxyFlow:
    """A request and its response as they crossed the edge."""

    session_id: str
    match: str  # "host", "prefix" or "cookie"
    method: str
    raw_path: str  # the public raw path and query, as the client sent it
    http_version: str
    client_addr: str
    client_headers: Headers
    # The same id names the client-side flow in the mitmproxy flow file (EDGE_FLOW_LOG).
    id: str = field(default_factory=lambda: new_flow_id())
    started: float = field(default_factory=time.time)
    upstream_url: str = ""
    upstream_headers: Headers = field(default_factory=lambda: NO_HEADERS)
    changes: list[HeaderChange] = field(default_factory=list)
    status: int | None = None
    reason: str = ""
    upstream_response_headers: Headers = field(default_factory=lambda: NO_HEADERS)
    response_headers: Headers = field(default_factory=lambda: NO_HEADERS)
    bytes_in: int = 0  # request body bytes (or WebSocket bytes) from the client
    bytes_out: int = 0  # response body bytes (or WebSocket bytes) to the client
    websocket: bool = False
    messages_in: int = 0
    messages_out: int = 0
    close_code: int | None = None
    error: str | None = None
    error_kind: UpstreamError | None = None  # None: no error, or not the upstream's (the browser left)
    ended: float | None = None

    def change(self, direction: str, action: str, name: str, old: str | None = None, new: str | None = None) -> None:
        self.changes.append(HeaderChange(direction, action, name, redact_header(name, old), redact_header(name, new)))

    def fail(self, kind: UpstreamError | None, error: str, status: int | None = None) -> None:
        """Record a failure: what happened for the log, its kind for metrics, and the status answered."""
        self.error = error
        self.error_kind = kind
        if status is not None:
            self.status = status

    def finish(self, error: str | None = None) -> None:
        if error and not self.error:
            self.error = error
        self.ended = time.time()

    @property
    def upstream_answered(self) -> bool:
        """Whether the upstream sent a response (otherwise any status is the edge's own)."""
        return bool(self.upstream_response_headers) or (self.websocket and self.status == 101)

    @property
    def duration_ms(self) -> float:
        return round(((self.ended or time.time()) - self.started) * 1000, 2)
