"""Error answers: a small HTML page for browsers, JSON for API clients."""

from __future__ import annotations

import html
import json
from http import HTTPStatus
from typing import Any, NamedTuple

from aiohttp import web
from multidict import CIMultiDict


def accepts_html(accept: str) -> bool:
    return "text/html" in accept


def wants_html(request: web.BaseRequest) -> bool:
    return accepts_html(request.headers.get("Accept", ""))


def error_response(request: web.BaseRequest, status: int, error: str, hint: str = "", **options: Any) -> web.Response:
    """An error answer in the form the client reads (``options``: those of :func:`error_page`)."""
    page = error_page(request.headers.get("Accept", ""), status, error, hint, **options)
    return web.Response(status=status, text=page.text, content_type=page.content_type, headers=page.headers)


class ErrorPage(NamedTuple):
    content_type: str
    text: str
    headers: dict[str, str]


def error_page(
    accept: str,
    status: int,
    error: str,
    hint: str = "",
    *,
    retry_after: int | None = None,
    extra: dict | None = None,
    refresh: bool = False,
) -> ErrorPage:
    """The body of an error answer: HTML when ``accept`` asks for it, else JSON.

    ``error`` says what happened, ``hint`` what to do about it. With
    ``refresh`` a browser page reloads itself after ``retry_after`` seconds
    (used while a preview starts).
    """
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if accepts_html(accept):
        title = html.escape(f"{status} {reason(status)}")
        meta = f'<meta http-equiv="refresh" content="{retry_after or 2}">' if refresh else ""
        body = (
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>{title}</title>{meta}"
            "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}"
            "h1{font-size:1.3em}pre{background:#f4f4f4;padding:1em;overflow:auto;font-size:13px}</style>"
            f"</head><body><h1>{title}</h1><p>{html.escape(error)}</p>"
            + (f"<p>{html.escape(hint)}</p>" if hint else "")
            + (f"<pre>{html.escape(extra['log'])}</pre>" if extra and extra.get("log") else "")
            + "</body></html>"
        )
        return ErrorPage("text/html", body, headers)
    payload = {"success": False, "error": error, **({"hint": hint} if hint else {}), **(extra or {})}
    return ErrorPage("application/json", json.dumps(payload), headers)


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def response_head(status: int, phrase: str, headers: CIMultiDict[str] | dict[str, str]) -> bytes:
    """An HTTP/1.1 status line and headers, for answers written below aiohttp."""
    lines = [f"HTTP/1.1 {status} {phrase or reason(status)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def raw_error(accept: str, status: int, error: str, hint: str = "", *, close: bool = False) -> tuple[CIMultiDict[str], bytes]:
    """A whole error answer written below aiohttp, in the shape of :func:`error_response`: its headers, and its bytes."""
    page = error_page(accept, status, error, hint)
    body = page.text.encode()
    headers: CIMultiDict[str] = CIMultiDict(page.headers)
    headers["Content-Type"] = f"{page.content_type}; charset=utf-8"
    headers["Content-Length"] = str(len(body))
    if close:
        headers["Connection"] = "close"
    return headers, response_head(status, reason(status), headers) + body
