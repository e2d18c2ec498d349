"""The session registry: sessionId → the thread it previews (client, user, thread, branch, worktree).

A session id is derived from the thread, so the same thread always gets the
same id, across restarts and repeated ``/api/init`` calls. It is a lower-case
DNS label (``[a-z0-9-]``, at most 63 characters, no ``--``) because sessions
are addressed both as ``/session/<id>/`` and as ``<id>--edit.<domain>``:
a readable part of the threadId plus a hash of (clientId, userId, threadId),
so that equal threadIds of different users never share a session.

The registry is one JSON file, ``WORKSPACE_PATH/.edge/sessions.json``
(a dot folder: no id can start with '.', so no client folder can clash),
rewritten atomically on each change:
``{"version": 1, "sessions": {"<sessionId>": {<ThreadSession.as_json()>}}}``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from control.jsonfile import read_json_object, write_json_atomic

log = logging.getLogger("edge.control.sessions")

REGISTRY_FILE = Path(".edge") / "sessions.json"
_STEM_MAX = 40


def session_id_for(client_id: str, user_id: str, thread_id: str) -> str:
    """The session id of a thread: ``<threadId as a label>-<10 hex digits>``."""
    digest = hashlib.sha256(f"{client_id}\0{user_id}\0{thread_id}".encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9]+", "-", thread_id.lower()).strip("-")[:_STEM_MAX].strip("-") or "thread"
    return f"{stem}-{digest}"


@dataclass(frozen=True)
class ThreadSession:
    """One registry entry."""

    session_id: str
    client_id: str
    user_id: str
    thread_id: str
    branch: str
    repo_url: str
    worktree: str
    created: float
    updated: float

    def as_json(self) -> dict:
        return {
            "sessionId": self.session_id,
            "clientId": self.client_id,
            "userId": self.user_id,
            "threadId": self.thread_id,
            "branch": self.branch,
            "repoUrl": self.repo_url,
            "worktree": self.worktree,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, data: dict) -> "ThreadSession":
        return cls(
            session_id=str(data["sessionId"]),
            client_id=str(data["clientId"]),
            user_id=str(data["userId"]),
            thread_id=str(data["threadId"]),
            branch=str(data["branch"]),
            repo_url=str(data["repoUrl"]),
            worktree=str(data["worktree"]),
            created=float(data["created"]),
            updated=float(data.get("updated", data["created"])),
        )


class SessionRegistry:
    """sessionId → ThreadSession, kept in memory and persisted on every change."""

    def __init__(self, workspace_path: Path) -> None:
        self.path = workspace_path / REGISTRY_FILE
        self._sessions: dict[str, ThreadSession] = {}
        data = read_json_object(self.path)
        if data is None:
            if self.path.exists():
                log.warning("%s is not a JSON object; starting with an empty registry", self.path)
            data = {}
        for session_id, entry in (data.get("sessions") or {}).items():
            try:
                self._sessions[session_id] = ThreadSession.from_json(entry)
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring a malformed entry %r in %s", session_id, self.path)

    def get(self, session_id: str) -> ThreadSession | None:
        """The thread a session previews, or None."""
        return self._sessions.get(session_id)

    def find(self, client_id: str, user_id: str, thread_id: str) -> ThreadSession | None:
        """The session of a thread, if it was initialised."""
        return self._sessions.get(session_id_for(client_id, user_id, thread_id))

    def all(self) -> list[ThreadSession]:
        return list(self._sessions.values())

    def put(self, session: ThreadSession) -> ThreadSession:
        """Add or update an entry (keeping its first ``created``) and persist."""
        old = self._sessions.get(session.session_id)
        if old is not None:
            session = replace(session, created=old.created)
        self._sessions[session.session_id] = session
        self._save()
        return session

    def update_branch(self, session_id: str, branch: str) -> None:
        old = self._sessions.get(session_id)
        if old is not None and old.branch != branch:
            self._sessions[session_id] = replace(old, branch=branch, updated=time.time())
            self._save()

    def remove(self, session_id: str) -> bool:
        if self._sessions.pop(session_id, None) is None:
            return False
        self._save()
        return True

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {"version": 1, "sessions": {sid: s.as_json() for sid, s in sorted(self._sessions.items())}},
        )


REGISTRY = web.AppKey("control_session_registry", SessionRegistry)
