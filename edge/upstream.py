"""The client the edge reaches dev servers with: one set of options for HTTP and WebSocket upstreams."""

from __future__ import annotations

from typing import Any

import aiohttp


def upstream_client(connect_timeout: float, connector: aiohttp.BaseConnector, **options: Any) -> aiohttp.ClientSession:
    """A client session that forwards as a proxy must.

    No total timeout (a dev server may stream for hours; aiohttp's default is
    300 s), bodies passed through still encoded, no cookie jar (cookies belong
    to the browser), no headers of its own and no proxy from the environment.
    ``options`` adds what one kind of upstream needs (a WebSocket response class).
    """
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        trust_env=False,
        **options,
    )
