"""The proxy log: one JSON line per proxied request or WebSocket session.

Addons receive each finished :class:`~edge.flow.ProxyFlow` through their
``flow_done`` hook, as mitmproxy's addons receive their flows. This module is
also the one place with the redaction rule: every addon that writes a flow
anywhere (stdout, memory, a flow file) passes headers and URLs through
:func:`redact_header` and :func:`redact_query`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections import deque
from typing import IO, Iterable, Protocol

import orjson

from edge.flow import ProxyFlow

log = logging.getLogger("edge.proxy")
_encode_slowly = json.JSONEncoder(separators=(",", ":")).encode


def encode_record(record: dict) -> str:
    """Compact JSON; orjson (ten times faster on these records) unless a value holds undecodable bytes."""
    try:
        return orjson.dumps(record).decode()
    except TypeError:  # orjson.JSONEncodeError: a header value with bytes that are not UTF-8 (surrogates)
        return _encode_slowly(record)

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token", "x-amz-security-token"}
)
# Headers that carry a URL, whose query may hold a token (a redirect to ``/?token=...``).
URL_HEADERS = frozenset({"location", "content-location", "referer"})
_QUERY_PARAM = re.compile(r"([?&][^=&#]*=)([^&#]*)")
# Query names that look like credentials: Vite's ``token``, ``access_token``, ``api_key``,
# ``X-Amz-Signature``, ``client_secret``, ``password``, OAuth's ``code``, ``sig``...
_SECRET_NAME = re.compile(
    r"(?i)token|secret|pass|pwd|auth|key|signature|credential|jwt|(?:^|[-_.?&])(?:sig|code)(?:$|[-_.=])"
)


def _redact_param(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    return name + REDACTED if value and _SECRET_NAME.search(name) else match.group(0)


def redact_query(url: str) -> str:
    """Hide secret-looking query values (Vite's ``?token=`` among them) in a path or URL."""
    if "?" not in url:
        return url
    return _QUERY_PARAM.sub(_redact_param, url)


def _redact_cookie_pairs(value: str) -> str:
    parts = []
    for part in value.split(";"):
        name, sep, _ = part.strip().partition("=")
        parts.append(f"{name}={REDACTED}" if sep else REDACTED)
    return "; ".join(parts)


def redact_header(name: str, value: str | None) -> str | None:
    """A header value fit for a log: credentials and cookie values hidden, names and schemes kept.

    ``Authorization: Bearer x`` → ``Bearer [redacted]``; ``Cookie: a=1; b=2`` →
    ``a=[redacted]; b=[redacted]``; ``Set-Cookie`` keeps its attributes; URL
    headers (``Location``, ``Referer``) go through :func:`redact_query`.
    """
    if value is None:
        return None
    lower = name.lower()
    if lower in URL_HEADERS:
        return redact_query(value)
    if lower not in SECRET_HEADERS:
        return value
    if lower == "cookie":
        return _redact_cookie_pairs(value)
    if lower == "set-cookie":
        pair, sep, attributes = value.partition(";")
        return _redact_cookie_pairs(pair) + (sep + attributes if sep else "")
    if lower in ("authorization", "proxy-authorization"):
        scheme, sep, _ = value.strip().partition(" ")
        if sep and scheme.isalpha():
            return f"{scheme} {REDACTED}"
    return REDACTED


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every header of a message, redacted (for the flow file, which keeps whole headers)."""
    return [(name, redact_header(name, value) or "") for name, value in headers]


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
    """Writes each flow as one JSON line (stdout by default, for CloudWatch).

    Lines finished in one turn of the event loop leave in one write at the
    end of that turn (a busy edge finishes several requests per turn), not
    one write and flush per line; without a running loop each line is written at once.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._pending: list[str] = []

    def flow_done(self, flow: ProxyFlow) -> None:
        self.encoded_done(flow.session_id, encode_record(flow_record(flow)))

    def encoded_done(self, session_id: str, encoded: str) -> None:
        # The record's own encoding with "type" spliced in first: no copy of the record.
        self._pending.append('{"type":"proxy",' + encoded[1:] + "\n")
        if len(self._pending) > 1:
            return  # a write is already due
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        lines, self._pending = self._pending, []
        if not lines:
            return
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):
            log.exception("proxy log write failed")

    def close(self) -> None:
        self.flush()


class Recent:
    """Keeps the last records in memory (for the operator page and tests).

    They are kept as JSON text and decoded when asked for: hundreds of
    records alive as dicts cost the garbage collector more, per request, than
    the rest of the proxy log together.
    """

    def __init__(self, size: int = 500) -> None:
        self._encoded: deque[tuple[str, str]] = deque(maxlen=size)

    def flow_done(self, flow: ProxyFlow) -> None:
        self.encoded_done(flow.session_id, encode_record(flow_record(flow)))

    def encoded_done(self, session_id: str, encoded: str) -> None:
        self._encoded.append((session_id, encoded))

    @property
    def records(self) -> list[dict]:
        """Every record kept, oldest first."""
        return [json.loads(encoded) for _, encoded in self._encoded]

    def last(self, limit: int) -> list[dict]:
        """The last ``limit`` records, oldest first."""
        if limit <= 0:
            return []
        return [json.loads(encoded) for _, encoded in list(self._encoded)[-limit:]]

    def for_session(self, session_id: str, limit: int = 100) -> list[dict]:
        """The last ``limit`` records of one session, oldest first."""
        found: list[str] = []
        if limit <= 0:
            return []
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

    def __init__(self, addons: list[Addon] | None = None) -> None:
        self.recent = Recent()
        self.addons: list[Addon] = [self.recent, *(addons or [])]

    def flow_done(self, flow: ProxyFlow) -> None:
        encoded = None  # built and encoded once, for the addons that take the JSON record
        for addon in self.addons:
            try:
                if isinstance(addon, (Recent, JsonLines)):
                    if encoded is None:
                        encoded = encode_record(flow_record(flow))
                    addon.encoded_done(flow.session_id, encoded)
                else:
                    addon.flow_done(flow)
            except Exception:  # an addon's bug must not break the proxy
                log.exception("proxy log addon %r failed", addon)

    def close(self) -> None:
        for addon in self.addons:
            try:
                addon.close()
            except Exception:  # one addon failing to close must not keep the others open
                log.exception("proxy log addon %r failed to close", addon)
