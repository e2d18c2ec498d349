"""Which ``Host`` headers the edge answers for, and which sessions a host names.

Vite's own allowlist protects a dev server against DNS rebinding; the edge
rewrites ``Host`` for the upstream, so it must enforce the same protection
itself, before anything is proxied.
"""

from __future__ import annotations

import functools
import ipaddress
import re

# Host names are matched case-insensitively; in a host label, '.' and '_' are
# not usable, so host mode only finds sessions whose id is a valid label.
_HOST_SESSION = r"(?P<session>[a-z0-9][a-z0-9-]{0,62})"


@functools.lru_cache(maxsize=256)
def split_host(host_header: str) -> str | None:
    """The host name of a ``Host`` header, lower-cased, without its port.

    Returns None for a value that is not a syntactically valid host, so that
    odd headers are refused rather than guessed at. Cached: a client sends the
    same Host with every request.
    """
    value = host_header.strip().lower()
    if not value or any(ch in value for ch in "/\\@ \t?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        literal, rest = value[: end + 1], value[end + 1 :]
        if rest and not re.fullmatch(r":\d{1,5}", rest):
            return None
        try:
            ipaddress.IPv6Address(literal[1:-1])
        except ValueError:
            return None
        return literal
    name, sep, port = value.partition(":")
    if sep and not re.fullmatch(r"\d{1,5}", port):
        return None
    if not re.fullmatch(r"[a-z0-9_.-]+", name) or name.startswith(".") or ".." in name:
        return None
    return name.rstrip(".")


class HostPolicy:
    """The allowlist of public hosts (``EDGE_PUBLIC_HOSTS``) and the session hosts.

    ``*.example.com`` matches any name below example.com (not example.com
    itself), like nginx's ``server_name``.
    """

    def __init__(self, public_hosts: tuple[str, ...], session_host_patterns: tuple[str, ...]) -> None:
        self._exact = {h.lower() for h in public_hosts if not h.startswith("*.")}
        self._suffixes = tuple(h[1:].lower() for h in public_hosts if h.startswith("*."))
        self._session_hosts = tuple(
            re.compile("^" + re.escape(p.lower()).replace(re.escape("{session}"), _HOST_SESSION) + "$")
            for p in session_host_patterns
        )

    def session_for_host(self, host: str) -> str | None:
        """The session a host-mode name addresses (``abc--edit...`` → ``abc``)."""
        for pattern in self._session_hosts:
            match = pattern.match(host)
            if match:
                return match.group("session")
        return None

    def allows(self, host: str) -> bool:
        """True when ``host`` (already split by :func:`split_host`) may be served."""
        if host in self._exact:
            return True
        if any(host.endswith(suffix) and len(host) > len(suffix) for suffix in self._suffixes):
            return True
        return self.session_for_host(host) is not None
