"""Which folder a session previews, and which session a thread has.

The supervisor only needs two answers, so they are one small interface that
whoever owns sessions implements: in the edge, control's session registry
(``control.previews.RegistryLocator``), given to ``preview.setup``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from core.ids import ThreadRef


def thread_folder(workspace: Path, thread: ThreadRef) -> Path:
    """The workspace layout of control/: one git worktree per thread."""
    return workspace / thread.client_id / thread.user_id / "threads" / thread.thread_id


class Locator(Protocol):
    """What the supervisor asks about sessions and threads."""

    def session_id(self, thread: ThreadRef) -> str:
        """The session (``/session/<id>/``) that previews ``thread``."""
        ...

    def folder(self, session_id: str) -> Path | None:
        """The folder session ``session_id`` previews, or None for an unknown session."""
        ...
