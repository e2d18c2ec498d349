"""Name why a model call failed, the same way for every executor, so a caller can act on it.

Bedrock (boto3's error code, or the Claude Code result line's ``api_error_status``
and its retry events' ``error`` kind) reports throttling, missing access, an
unknown model and missing credentials in different words; the caller gets one
short cause first, then the provider's own message.
"""

from __future__ import annotations

# (cause, what to do) by the signals each provider gives.
THROTTLED = "throttled by Bedrock (too many requests); try again in a minute, or raise the account's quota"
DENIED = "access denied: these AWS credentials may not invoke this model (enable it for the account and region in the Bedrock console)"
NO_MODEL = "model not found: check CLAUDE_MODEL / BEDROCK_MODEL_ID and AWS_REGION"
NO_CREDENTIALS = "no AWS credentials: give the task a role, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
UNAUTHENTICATED = "authentication failed: the credentials were refused"
UNAVAILABLE = "the model service is unavailable or overloaded; try again later"
REFUSED = "the model service refused the request"

_BY_STATUS = {429: THROTTLED, 403: DENIED, 404: NO_MODEL, 401: UNAUTHENTICATED, 400: REFUSED}
_BY_CODE = {
    "throttlingexception": THROTTLED, "toomanyrequestsexception": THROTTLED, "servicequotaexceededexception": THROTTLED,
    "rate_limit": THROTTLED,
    "accessdeniedexception": DENIED, "unrecognizedclientexception": UNAUTHENTICATED, "authentication_failed": UNAUTHENTICATED,
    "resourcenotfoundexception": NO_MODEL, "model_not_found": NO_MODEL,
    "nocredentialserror": NO_CREDENTIALS, "cloud_credential_error": NO_CREDENTIALS, "partialcredentialserror": NO_CREDENTIALS,
    "serviceunavailableexception": UNAVAILABLE, "modelnotreadyexception": UNAVAILABLE, "internalserverexception": UNAVAILABLE,
    "overloaded": UNAVAILABLE, "server_error": UNAVAILABLE,
}


def cause(status: int | None = None, code: str | None = None, message: str = "") -> str | None:
    """The cause named by an HTTP status, an error code or kind, or (last) the message; None if unknown."""
    if code and code.strip().lower() in _BY_CODE:
        return _BY_CODE[code.strip().lower()]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status is not None and (status >= 500 or status == 529):
        return UNAVAILABLE
    lowered = message.lower()
    if "credential" in lowered:
        return NO_CREDENTIALS
    if "model identifier is invalid" in lowered or "model not found" in lowered:
        return NO_MODEL
    return None


def describe(status: int | None = None, code: str | None = None, message: str = "", limit: int = 300) -> str:
    """``"<cause> (HTTP 429 ThrottlingException): <provider's message>"``, or just the message when no cause is known."""
    named = cause(status, code, message)
    tags = " ".join(part for part in (f"HTTP {status}" if status else "", code or "") if part)
    text = message.strip()[:limit]
    if named is None:
        return f"{text} ({tags})" if tags else text
    return f"{named}" + (f" ({tags})" if tags else "") + (f": {text}" if text else "")
