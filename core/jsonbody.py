"""JSON request bodies and JSON error answers for the API."""

from __future__ import annotations

import json

from aiohttp import web

MAX_JSON_BODY = 1024 * 1024


class JsonError(web.HTTPException):
    """An API error answered as ``{"success": false, "error": ...}`` with any status."""

    def __init__(self, status: int, error: str, **extra: object) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"success": False, "error": error, **extra}),
            content_type="application/json",
        )


def json_error(status: int, error: str, **extra: object) -> web.HTTPException:
    """The exception to raise for an API error."""
    return JsonError(status, error, **extra)


async def read_json_body(request: web.Request, limit: int = MAX_JSON_BODY) -> dict:
    """The request's JSON object; 413 when too large, 400 when not a JSON object (or nested too deeply)."""
    if request.content_length is not None and request.content_length > limit:
        raise json_error(413, f"request body larger than {limit} bytes")
    data = bytearray()
    async for chunk in request.content.iter_any():
        data += chunk
        if len(data) > limit:
            raise json_error(413, f"request body larger than {limit} bytes")
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):  # also numbers past Python's digit limit
        raise json_error(400, "request body is not valid JSON") from None
    except RecursionError:  # nesting deeper than the interpreter's stack: not a request anyone means
        raise json_error(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise json_error(400, "request body must be a JSON object")
    return body
