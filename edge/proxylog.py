"""The proxy log: one JSON line per proxied request or WebSocket session.

Addons receive each finished :class:`~edge.flow.ProxyFlow` through their
``flow_done`` hook, as mitmproxy's addons receive their flows.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import deque
from typing import IO, Protocol

from edge.flow import ProxyFlow

log = logging.getLogger("edge.proxy")

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|access_token|api_key|key|password|secret)=)[^&#]*")


def redact_header(name: str, value: str | None) -> str | None:
    if value is None or name.lower() not in SECRET_HEADERS:
        return value
    return "[redacted]"


def redact_query(raw_path: str) -> str:
    """Hide secret-looking query values (Vite's ``?token=`` among them)."""
    return _SECRET_QUERY.sub(r"\1[redacted]", raw_path)


class Addon(Protocol):
    def flow_done(self, flow: ProxyFlow) -> None: ...

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
        "changes": [
            {
                "direction": c.direction,
                "action": c.action,
                "name": c.name,
                "old": redact_header(c.name, c.old),
                "new": redact_header(c.name, c.new),
            }
            for c in flow.changes
        ],
        **({"messagesIn": flow.messages_in, "messagesOut": flow.messages_out, "closeCode": flow.close_code} if flow.websocket else {}),
        **({"error": flow.error} if flow.error else {}),
    }


class JsonLines:
    """Writes each flow as one JSON line (stdout by default, for CloudWatch)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def flow_done(self, flow: ProxyFlow) -> None:
        try:
            self.stream.write(json.dumps({"type": "proxy", **flow_record(flow)}, separators=(",", ":")) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            log.exception("proxy log write failed")

    def close(self) -> None:
        pass


class Recent:
    """Keeps the last records in memory (for the operator page and tests)."""

    def __init__(self, size: int = 500) -> None:
        self.records: deque[dict] = deque(maxlen=size)

    def flow_done(self, flow: ProxyFlow) -> None:
        self.records.append(flow_record(flow))

    def close(self) -> None:
        pass


class ProxyLog:
    """Hands each finished flow to every addon; a failing addon never breaks a request."""

    def __init__(self, addons: list[Addon] | None = None) -> None:
        self.recent = Recent()
        self.addons: list[Addon] = [self.recent, *(addons or [])]

    def flow_done(self, flow: ProxyFlow) -> None:
        for addon in self.addons:
            try:
                addon.flow_done(flow)
            except Exception:  # an addon's bug must not break the proxy
                log.exception("proxy log addon %r failed", addon)

    def close(self) -> None:
        for addon in self.addons:
            addon.close()
