"""What the supervisor tells the proxy about a session: where its requests go now.

The edge owns the session table; the supervisor only publishes routes to it
through :class:`RouteTable`, which the edge implements (``edge.previews``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from yarl import URL


class RouteState(str, Enum):
    """Whether a preview can take requests now."""

    READY = "ready"
    STARTING = "starting"
    FAILED = "failed"


@dataclass(frozen=True)
class PreviewRoute:
    """Where one session's requests go: a ready dev server, or a starting/failed page with ``detail``."""

    session_id: str
    target: URL | None
    state: RouteState = RouteState.READY
    detail: str = ""
    retry_after: int = 2
    root: Path | None = None  # the dev server's project folder (its /@fs/ reads stay inside)


class RouteTable(Protocol):
    """The session table, as the supervisor sees it."""

    def publish(self, route: PreviewRoute) -> None:
        """Make ``route`` the session's route (a dev server became ready)."""
        ...

    async def withdraw(self, session_id: str) -> None:
        """Remove the session's route if the previews published it (its WebSockets close)."""
        ...

    def last_activity(self, session_id: str) -> float:
        """Monotonic time of the session's last proxied request or frame; 0.0 when none."""
        ...
