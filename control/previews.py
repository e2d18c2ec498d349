"""Previews of threads: the session registry tells the preview supervisor what a session shows.

One session id per thread everywhere: ``SessionRegistry.session_id_of(thread)``
is the id in ``/api/init``'s ``previewUrl``, in ``/session/<id>/`` and in the
answers of ``/api/astro/.../<client>/<user>/<thread>``; so equal threadIds of
different clients or users never share a preview.
"""

from __future__ import annotations

from pathlib import Path

from control.sessions import SessionRegistry
from core.ids import ThreadRef
from preview.locator import thread_folder


class RegistryLocator:
    """``preview.Locator`` backed by control's session registry.

    A registered session previews its entry's worktree. A thread that
    ``/api/init`` never registered but whose folder exists where control/
    lays threads out (made by an older container, or the registry file was
    lost) is remembered in memory once ``/api/astro/...`` names it: its bare
    ``/session/<id>/`` URL then works until the edge restarts. It is not
    added to the registry, which records what ``/api/init`` made (a worktree
    on a thread branch of a known remote); ``/api/init`` registers it.
    """

    def __init__(self, registry: SessionRegistry, workspace_path: Path) -> None:
        self.registry = registry
        self.workspace = workspace_path.absolute()
        self._unregistered: dict[str, Path] = {}

    def session_id(self, thread: ThreadRef) -> str:
        session = self.registry.session_id_of(thread)
        if self.registry.get(session) is None:
            folder = thread_folder(self.workspace, thread)
            if folder.is_dir():  # only real folders: naming ids alone never grows this table
                self._unregistered[session] = folder
        return session

    def folder(self, session_id: str) -> Path | None:
        entry = self.registry.get(session_id)
        if entry is not None:
            return Path(entry.worktree)
        return self._unregistered.get(session_id)
