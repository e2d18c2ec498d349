"""The one error type of the control layer, answered as ``{"success": false, "error": ...}``."""

from __future__ import annotations


class ControlError(Exception):
    """A refusal or failure with the HTTP status that tells the caller what happened.

    ``extra`` holds fields for the JSON answer (``hint``, ``conflicts``, ...);
    messages and fields must already be free of credentials.
    """

    def __init__(self, status: int, message: str, /, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra
