"""The session registry: sessionId → the thread it previews (client, user, thread, branch, worktree).

A thread has one session id. The edge derives it from the thread, so the same
thread always gets the same id across restarts and repeated ``/api/init``
calls (ids issued before stay valid: they are in the registry); a caller may name it instead (Hermes names sessions with its own
uuids, see ``control.hermes``), and then the registry remembers that id for
the thread. A derived id is a lower-case
DNS label (``[a-z0-9-]``, at most 63 characters, no ``--``) because sessions
are addressed both as ``/session/<id>/`` and as ``<id>--edit.<domain>``:
a readable part of the threadId plus an HMAC of (clientId, userId, threadId)
keyed with EDGE_SESSION_SECRET or a key made once in ``.edge/session-secret``,
so that equal threadIds of different users never share a session and nobody
can compute a session's link from its ids.

The registry is one JSON file, ``WORKSPACE_PATH/.edge/sessions.json``
(a dot folder: no id can start with '.', so no client folder can clash),
rewritten atomically on each change:
``{"version": 1, "sessions": {"<sessionId>": {<ThreadSession.as_json()>}}}``.

Last activity changes on every proxied request, so it is kept in memory
(``note_activity``) and written by ``flush()`` (periodically and at shutdown),
never once per request. No SQLite and no file locks: the file may live on
EFS/NFS, and one edge process owns it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from aiohttp import web

from core.ids import ThreadRef
from core.jsonfile import read_json_file, write_json_atomic

log = logging.getLogger(__name__)

REGISTRY_FILE = Path(".edge") / "sessions.json"
SECRET_FILE = Path(".edge") / "session-secret"
_STEM_MAX = 40
STATUSES = ("initializing", "ready", "idle", "error")


def session_id_for(thread: ThreadRef, key: bytes) -> str:
    """The session id the edge derives for a thread: ``<threadId as a label>-<16 hex digits of an HMAC>``.

    Keyed, so nobody who knows or guesses the ids can compute a preview link.
    """
    client_id, user_id, thread_id = thread
    digest = hmac.new(key, f"{client_id}\0{user_id}\0{thread_id}".encode(), hashlib.sha256).hexdigest()[:16]
    stem = re.sub(r"[^a-z0-9]+", "-", thread_id.lower()).strip("-")[:_STEM_MAX].strip("-") or "thread"
    return f"{stem}-{digest}"


def session_key(workspace_path: Path, configured: str | None = None) -> bytes:
    """EDGE_SESSION_SECRET, else the workspace's own key (made once, mode 0600, kept with the registry)."""
    if configured:
        return configured.encode()
    path = workspace_path / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path.read_bytes().strip()


@dataclass(frozen=True)
class ThreadSession:
    """One registry entry."""

    session_id: str
    thread: ThreadRef
    branch: str
    repo_url: str
    worktree: str
    created: float
    updated: float
    status: str = "ready"  # one of STATUSES
    last_activity: float = 0.0  # wall clock; 0: none recorded
    preview_url: str = ""
    user_email: str = ""  # Hermes' userEmail, when Hermes named the session (its DynamoDB range key)

    @property
    def client_id(self) -> str:
        return self.thread.client_id

    @property
    def user_id(self) -> str:
        return self.thread.user_id

    @property
    def thread_id(self) -> str:
        return self.thread.thread_id

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
            "status": self.status,
            "lastActivity": self.last_activity,
            "previewUrl": self.preview_url,
            **({"userEmail": self.user_email} if self.user_email else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> "ThreadSession":
        return cls(
            session_id=str(data["sessionId"]),
            thread=ThreadRef(str(data["clientId"]), str(data["userId"]), str(data["threadId"])),
            branch=str(data["branch"]),
            repo_url=str(data["repoUrl"]),
            worktree=str(data["worktree"]),
            created=float(data["created"]),
            updated=float(data.get("updated", data["created"])),
            status=data["status"] if data.get("status") in STATUSES else "ready",
            last_activity=float(data.get("lastActivity") or 0.0),
            preview_url=str(data.get("previewUrl") or ""),
            user_email=str(data.get("userEmail") or ""),
        )


class SessionRegistry:
    """sessionId → ThreadSession, kept in memory and persisted on every change."""

    def __init__(self, workspace_path: Path, secret: str | None = None) -> None:
        self.path = workspace_path / REGISTRY_FILE
        self._workspace = workspace_path
        self._secret = secret
        self._key: bytes | None = None
        self._sessions: dict[str, ThreadSession] = {}
        self._listeners: list[Listener] = []
        self._by_thread: dict[ThreadRef, str] = {}
        self._dirty = False
        data = read_json_file(self.path)
        if data is None:
            if self.path.exists():
                log.warning("%s is not a JSON object; starting with an empty registry", self.path)
            data = {}
        for session_id, entry in (data.get("sessions") or {}).items():
            try:
                entry = ThreadSession.from_json(entry)
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring a malformed entry %r in %s", session_id, self.path)
                continue
            self._sessions[session_id] = entry
            self._by_thread[entry.thread] = session_id

    @property
    def key(self) -> bytes:
        """The key of derived session ids (read or made when first needed)."""
        if self._key is None:
            self._key = session_key(self._workspace, self._secret)
        return self._key

    def get(self, session_id: str) -> ThreadSession | None:
        """The thread a session previews, or None."""
        return self._sessions.get(session_id)

    def find(self, thread: ThreadRef) -> ThreadSession | None:
        """The session of a thread, if it was initialised."""
        session_id = self._by_thread.get(thread)
        return self._sessions.get(session_id) if session_id is not None else None

    def session_id_of(self, thread: ThreadRef) -> str:
        """The thread's session id: the registered one, else the one the edge derives for it."""
        found = self._by_thread.get(thread)
        return found if found is not None else session_id_for(thread, self.key)

    def all(self) -> list[ThreadSession]:
        return list(self._sessions.values())

    def on_change(self, listener: "Listener") -> None:
        """Call ``listener(session_id, entry)`` after each persisted change (entry None: removed)."""
        self._listeners.append(listener)

    def put(self, session: ThreadSession) -> ThreadSession:
        """Add or update an entry (keeping its first ``created``, activity and preview URL) and persist."""
        old = self._sessions.get(session.session_id)
        if old is not None and old.thread != session.thread:
            raise ValueError(f"session {session.session_id!r} already previews the thread {tuple(old.thread)}")
        if old is not None:
            session = replace(
                session,
                created=old.created,
                last_activity=max(old.last_activity, session.last_activity),
                preview_url=session.preview_url or old.preview_url,
                user_email=session.user_email or old.user_email,
            )
        taken = self._by_thread.get(session.thread)
        if taken is not None and taken != session.session_id:
            raise ValueError(f"thread {tuple(session.thread)} already has the session {taken!r}")
        self._sessions[session.session_id] = session
        self._by_thread[session.thread] = session.session_id
        self._save()
        self._notify(session.session_id, session)
        return session

    def update(self, session_id: str, **changes: object) -> ThreadSession | None:
        """Change fields of an entry (e.g. ``status``); persisted and announced only if something changed."""
        old = self._sessions.get(session_id)
        if old is None:
            return None
        if "status" in changes and changes["status"] not in STATUSES:
            raise ValueError(f"unknown session status {changes['status']!r}")
        new = replace(old, **changes)  # type: ignore[arg-type]
        if new != old:
            self._sessions[session_id] = replace(new, updated=time.time())
            self._save()
            self._notify(session_id, self._sessions[session_id])
        return self._sessions[session_id]

    def note_activity(self, session_id: str, when: float) -> bool:
        """Remember activity in memory only (written by ``flush``); True when it moved forward."""
        old = self._sessions.get(session_id)
        if old is None or when <= old.last_activity:
            return False
        self._sessions[session_id] = replace(old, last_activity=when)
        self._dirty = True
        return True

    def flush(self) -> bool:
        """Write remembered activity to the file, if any; True when it wrote."""
        if not self._dirty:
            return False
        self._save()
        return True

    def remove(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self._by_thread.pop(session.thread, None)
        self._save()
        self._notify(session_id, None)
        return True

    def _save(self) -> None:
        write_json_atomic(
            self.path,
            {"version": 1, "sessions": {sid: s.as_json() for sid, s in sorted(self._sessions.items())}},
        )
        self._dirty = False

    def _notify(self, session_id: str, session: ThreadSession | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(session_id, session)
            except Exception:  # an observer (DynamoDB) must never break the registry
                log.exception("session listener failed for %s", session_id)


Listener = Callable[[str, "ThreadSession | None"], None]


REGISTRY = web.AppKey("control_session_registry", SessionRegistry)
