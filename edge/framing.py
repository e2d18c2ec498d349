"""Refuse requests whose body boundaries two HTTP parsers could read differently.

If the load balancer in front and the edge disagree on where a request body
ends, the rest of it is read as a second, hidden request ("request
smuggling"). aiohttp's parser (llhttp) already answers 400 to Content-Length
with Transfer-Encoding, duplicate Content-Length, obs-fold, bad chunk sizes
and unknown codings; checked with aiohttp 3.14 it lets through
``Transfer-Encoding`` on HTTP/1.0 and codings before ``chunked``
(``gzip, chunked``), and its pure-Python parser also ``chunked, chunked``.
This middleware runs first and refuses those, plus the parser's own cases
again, before anything is routed or proxied; the connection is then closed,
as its remaining bytes cannot be trusted.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web
from aiohttp import HttpVersion11

from edge.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def framing_problem(request: web.BaseRequest) -> str | None:
    """Why this request's framing is ambiguous, or None when it is not."""
    lengths = request.headers.getall("Content-Length", [])
    codings = request.headers.getall("Transfer-Encoding", [])
    if len(lengths) > 1:
        return "More than one Content-Length header."
    if lengths and not (lengths[0].isascii() and lengths[0].isdigit()):
        return "Content-Length is not a number."
    if not codings:
        return None
    if request.version < HttpVersion11:
        return "Transfer-Encoding is not allowed in HTTP/1.0."
    if lengths:
        return "Content-Length and Transfer-Encoding together."
    if len(codings) != 1 or codings[0].strip().lower() != "chunked":
        return "Only 'Transfer-Encoding: chunked' is accepted."
    return None


@web.middleware
async def reject_ambiguous_framing(request: web.Request, handler: Handler) -> web.StreamResponse:
    problem = framing_problem(request)
    if problem is None:
        return await handler(request)
    response = error_response(request, 400, problem)
    response.force_close()
    return response
