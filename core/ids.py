"""The ids that become folder names, branch names and session paths: checked before any path is built.

clientId, userId, threadId and session ids follow one rule: letters, digits,
``_ - .``, no leading ``.`` or ``-``, no ``..``, at most 64 characters. One
definition, used by the edge's routing, the control plane and the previews.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from core.errors import Invalid

# A session id (also the rule of client, user and thread ids).
SESSION_ID = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
_SESSION_ID_RE = re.compile(SESSION_ID)
THREAD_BRANCH_PREFIX = "thread-"

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_BRANCH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")


def is_session_id(value: str) -> bool:
    """True when ``value`` may name a session (and so appear in a path)."""
    return _SESSION_ID_RE.fullmatch(value) is not None and ".." not in value  # not match(): "$" allows a final newline


class ThreadRef(NamedTuple):
    """A conversation thread: ``WORKSPACE_PATH/<client>/<user>/threads/<thread>``."""

    client_id: str
    user_id: str
    thread_id: str

    def valid(self) -> bool:
        """Ids are letters, digits, ``_ - .``; no ``..``, no leading ``-`` or ``.``; at most 64."""
        return all(is_session_id(part) for part in self)


def is_valid_id(value: object) -> bool:
    """True for a string that may name a client, user or thread folder."""
    return isinstance(value, str) and is_session_id(value)


def check_id(name: str, value: object) -> str:
    """``value`` when it is a valid id, else Invalid naming the field."""
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string")
    if not is_session_id(value):
        raise Invalid(
            f"{name} {value[:80]!r} is not a valid id (letters, digits, '_', '-', '.'; "
            "no leading '.' or '-', no '..', at most 64 characters)"
        )
    return value


def check_session_name(value: object) -> str:
    """A session id a caller chooses (Hermes' uuids): a valid thread id that is also one DNS label
    (lower-case letters, digits and single '-'), so it works as ``/session/<id>/`` and as a host."""
    session_id = check_thread_id(value)
    if not _LABEL_RE.fullmatch(session_id) or "--" in session_id:
        raise Invalid(
            f"sessionId {session_id[:80]!r} must be lower-case letters, digits and single '-' "
            "(at most 63 characters, starting and ending with a letter or digit)"
        )
    return session_id


def check_thread_id(value: object) -> str:
    """A valid id that also makes a valid branch name ``thread-<id>``."""
    thread_id = check_id("threadId", value)
    if thread_id.endswith(".") or thread_id.endswith(".lock"):
        raise Invalid("threadId must not end with '.' or '.lock' (it names a git branch)")
    return thread_id


def thread_branch(thread_id: str) -> str:
    """The branch a thread works on."""
    return THREAD_BRANCH_PREFIX + thread_id


def is_branch_name(value: object) -> bool:
    """A strict subset of git's ref-name rules: safe as an argument and as a path."""
    if not isinstance(value, str) or not _BRANCH_RE.fullmatch(value) or value == "HEAD":
        return False
    if any(bad in value for bad in ("..", "//", "/.", "@{")):
        return False
    return not value.endswith(("/", ".", ".lock")) and ".lock/" not in value


def check_branch(value: object) -> str:
    """``value`` when it is an acceptable branch name, else Invalid."""
    if not is_branch_name(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise Invalid(f"branch {shown!r} is not an acceptable branch name")
    return value  # type: ignore[return-value]
