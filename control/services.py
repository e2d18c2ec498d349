"""What the control plane is given by the app that hosts it (the edge): settings, origin, live sessions.

The control plane never imports the edge. The edge sets these keys when it
wires the app (``edge.app``): control's settings section, how to tell the
origin a client used (the edge knows its trusted proxies), and the session
service that sees sessions live (activity from the proxy, previews, the
session table) and owns ending a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol, TypeVar

from aiohttp import web

from control.sessions import ThreadSession
from control.settings import ControlSettings
from core.ids import ThreadRef

T = TypeVar("T")

# The origin (scheme://host) a request's client used, X-Forwarded-* from trusted proxies honoured.
ClientOrigin = Callable[[web.Request], str]


@dataclass(frozen=True)
class SessionView:
    """A session as the API shows it: its thread, where it works, its state now and its last use."""

    key: ThreadRef
    session_id: str
    repo_url: str  # without credentials
    branch: str
    worktree: str
    status: str  # initializing, error, ready or idle
    preview_url: str | None
    preview_state: str  # the preview supervisor's state
    route_state: str | None  # the session table's route, if any
    created: str | None  # ISO-8601 to the second
    last_activity: str | None
    last_activity_epoch: float

    def as_json(self) -> dict:
        return {
            "sessionId": self.session_id,
            "clientId": self.key.client_id,
            "userId": self.key.user_id,
            "threadId": self.key.thread_id,
            "repoUrl": self.repo_url,
            "branch": self.branch,
            "worktree": self.worktree,
            "status": self.status,
            "previewUrl": self.preview_url,
            "preview": {"state": self.preview_state, "route": self.route_state},
            "created": self.created,
            "lastActivity": self.last_activity,
            "lastActivityEpoch": self.last_activity_epoch,
        }


@dataclass(frozen=True)
class EndedSession:
    """What ending a session did."""

    session_id: str
    preview_stopped: bool  # a dev server was running
    purged: bool  # its worktree was removed

    def as_json(self) -> dict:
        return {"success": True, "sessionId": self.session_id, "previewStopped": self.preview_stopped, "purged": self.purged}


class SessionService(Protocol):
    """Sessions as the API shows them, and the one place that ends a session."""

    def view(self, session: ThreadSession) -> SessionView:
        """A session as the API lists it."""
        ...

    def last_activity(self, session: ThreadSession) -> float:
        """Wall-clock time of the session's last use."""
        ...

    async def track_init(self, sid: str, key: ThreadRef, preview_url: str, work: Awaitable[T], user_email: str = "") -> T:
        """Run an ``/api/init`` of session ``sid``, announcing ``initializing`` first and ``ready`` or ``error`` after."""
        ...

    def known(self, sid: str) -> bool:
        """True for a session that is registered, routed or previewed."""
        ...

    async def end(self, sid: str, purge: bool) -> EndedSession:
        """Stop its preview, close its sockets, drop its route and registry entry (``purge``: its worktree too)."""
        ...


SETTINGS = web.AppKey("control_settings", ControlSettings)
CLIENT_ORIGIN = web.AppKey("control_client_origin", ClientOrigin)
SESSION_SERVICE = web.AppKey("control_session_service", SessionService)  # set once the edge has one
