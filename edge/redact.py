"""Keeping secrets out of everything the edge writes: logs, the operator page, flow files.

The one place with the redaction rule: whatever shows a header or URL of a
proxied exchange passes it through :func:`redact_header` or :func:`redact_query`.
"""

from __future__ import annotations

import re
from typing import Iterable

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-auth-token", "x-amz-security-token"}
)
# Headers that carry a URL, whose query may hold a token (a redirect to ``/?token=...``).
URL_HEADERS = frozenset({"location", "content-location", "referer"})
_QUERY_PARAM = re.compile(r"([?&][^=&#]*=)([^&#]*)")
# Query names that look like credentials: Vite's ``token``, ``access_token``, ``api_key``,
# ``X-Amz-Signature``, ``client_secret``, ``password``, OAuth's ``code``, ``sig``...
_SECRET_PARTS = ("token", "secret", "pass", "pwd", "auth", "key", "signature", "credential", "jwt")
_SECRET_WORDS = ("sig", "code")  # only as a whole word of the name: not ``design`` or ``encode``
_SECRET_NAME = re.compile(
    "(?i)" + "|".join(_SECRET_PARTS) + r"|(?:^|[-_.?&])(?:" + "|".join(_SECRET_WORDS) + r")(?:$|[-_.=])"
)
# Every ASCII text _SECRET_NAME matches holds one of these, lowered: an ASCII query without any
# is left alone after a few substring tests, a quarter of the cost of the expression's search.
# (Ignoring case, the expression also matches ``ſ`` for ``s`` and ``ı`` for ``i``: others are searched.)
_LOWERED_HINTS = _SECRET_PARTS + _SECRET_WORDS


def _redact_param(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    return name + REDACTED if value and _SECRET_NAME.search(name) else match.group(0)


def redact_query(url: str) -> str:
    """Hide secret-looking query values (Vite's ``?token=`` among them) in a path or URL.

    An ASCII query with none of ``_LOWERED_HINTS`` in it (Astro's
    ``?astro&type=script&index=0&lang.ts``, nearly every query a preview
    sends) is returned as it is, without splitting it into parameters.
    """
    query = url.find("?")
    if query < 0:
        return url
    text = url[query:]
    if text.isascii():
        lowered = text.lower()
        if not any(hint in lowered for hint in _LOWERED_HINTS):
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
