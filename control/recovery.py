"""Leftovers of interrupted git work (a killed process, a container stopped mid-clone).

Each function removes only what provably belongs to an operation that is no
longer running: callers hold the workspace's asyncio locks, and lock files
are only removed when no git process works below the folder (checked in
``/proc``), because a live git process may hold them legitimately.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

HALF_CLONE_PREFIX = ".project.tmp-"


def git_running_under(folder: Path) -> bool:
    """True when a process named ``git*`` has its working directory in ``folder``."""
    root = str(folder)
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith("git"):
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            return True
    return False


def remove_stale_locks(lock_files: Iterable[Path], folder: Path) -> list[Path]:
    """Delete the existing ``*.lock`` files among ``lock_files`` if no git runs in ``folder``."""
    existing = [p for p in lock_files if p.name.endswith(".lock") and p.is_file()]
    if not existing or git_running_under(folder):
        return []
    for path in existing:
        path.unlink(missing_ok=True)
        log.warning("removed stale git lock %s (no git process was running)", path)
    return existing


def remove_half_clones(user_dir: Path) -> list[Path]:
    """Delete clones that never finished (they are renamed into place only when complete)."""
    removed = []
    if user_dir.is_dir():
        for entry in user_dir.iterdir():
            if entry.name.startswith(HALF_CLONE_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                log.warning("removed an unfinished clone %s", entry)
                removed.append(entry)
    return removed


def worktree_admin_dir(worktree: Path, common_dir: Path) -> Path | None:
    """The ``.git/worktrees/<id>`` folder that administers ``worktree``, if any."""
    dot_git = worktree / ".git"
    try:
        text = dot_git.read_text().strip()
    except OSError:
        text = ""
    if text.startswith("gitdir:"):
        admin = Path(text[len("gitdir:") :].strip())
        return admin if admin.is_absolute() else (worktree / admin).resolve()
    admins = common_dir / "worktrees"
    if admins.is_dir():
        for admin in admins.iterdir():
            try:
                target = Path((admin / "gitdir").read_text().strip())
            except OSError:
                continue
            if os.path.realpath(target) == os.path.realpath(dot_git):
                return admin
    return None


def remove_half_worktree(worktree: Path, common_dir: Path) -> bool:
    """Undo a ``git worktree add`` that was killed before it finished.

    git marks a worktree it is creating with a ``locked`` file saying
    "initializing" and deletes that file when the checkout is done, so such a
    worktree never held anyone's work.
    """
    admin = worktree_admin_dir(worktree, common_dir)
    if admin is None:
        if worktree.is_dir() and not any(worktree.iterdir()):
            worktree.rmdir()
            return True
        return False
    try:
        reason = (admin / "locked").read_text().strip()
    except OSError:
        return False
    if reason != "initializing":
        return False
    shutil.rmtree(admin, ignore_errors=True)
    shutil.rmtree(worktree, ignore_errors=True)
    log.warning("removed an unfinished worktree %s", worktree)
    return True
