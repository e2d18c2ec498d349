"""Domain errors, and the one place that answers them over HTTP.

Code raises what went wrong (:class:`Invalid`, :class:`NotFound`,
:class:`Conflict`, ...) with a message the caller can act on and extra fields
for the answer (``hint``, ``details``, ...); it never picks an HTTP status.
:func:`error_middleware` turns them into ``{"success": false, "error": ...}``
with the status :data:`HTTP_STATUS` gives the kind. Messages and fields must
already be free of credentials.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping

from aiohttp import web


class DomainError(Exception):
    """A refusal or failure the caller is told about; ``extra`` holds more fields for the answer."""

    def __init__(self, message: str, /, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class Invalid(DomainError, ValueError):
    """A request value is refused (a bad id, a missing field, a value of the wrong type)."""


class Unauthorized(DomainError):
    """Credentials were refused (the git remote refused the token)."""


class Forbidden(DomainError):
    """Not allowed, whoever asks (pushing to a protected branch)."""


class NotFound(DomainError):
    """What the request names does not exist (a thread, a session, a plan, a branch)."""


class Conflict(DomainError):
    """The request clashes with the current state (a detached HEAD, a session taken, a rejected push)."""


class Gone(DomainError):
    """It existed but can no longer be used (an expired or used plan)."""


class Failed(DomainError):
    """A failure that is not the caller's fault (a tool failed, a setting is unusable)."""


class Unreachable(DomainError):
    """A remote the edge needs could not be reached (the git remote)."""


HTTP_STATUS: dict[type[DomainError], int] = {
    Invalid: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    Failed: 500,
    Unreachable: 502,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Translate = Callable[[Exception], DomainError]


def http_status(error: DomainError) -> int:
    """The HTTP status of an error's kind (500 for a kind not in :data:`HTTP_STATUS`)."""
    for kind in type(error).__mro__:
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]  # type: ignore[index]
    return 500


def error_response(error: DomainError) -> web.Response:
    """``{"success": false, "error": message, **extra}`` with the kind's status."""
    # Built here, not with json_error: extra fields may include "status" (e.g. "cloning").
    return web.json_response({"success": False, "error": error.message, **error.extra}, status=http_status(error))


def error_middleware(translations: Mapping[type[Exception], Translate] | None = None):  # noqa: ANN201 - an aiohttp middleware
    """The middleware that answers domain errors; ``translations`` turn other packages' errors into domain errors."""
    kinds = tuple(translations or ())

    @web.middleware
    async def domain_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except DomainError as exc:
            return error_response(exc)
        except kinds as exc:
            translate = next(t for kind, t in translations.items() if isinstance(exc, kind))  # type: ignore[union-attr]
            return error_response(translate(exc))

    return domain_errors
