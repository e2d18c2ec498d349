"""Workspaces: one clone per user, one git worktree and branch per thread.

Layout under WORKSPACE_PATH (ids checked by ``core.ids`` before any path is built)::

    <clientId>/<userId>/project/                    the clone: blob-less, no checkout of its own
    <clientId>/<userId>/threads/<threadId>/         the thread's worktree, on branch thread-<threadId>
    <clientId>/<userId>/.claude/threads/<id>.json   the thread's context
    <clientId>/<userId>/metadata.json               the user's repository and default branch
    .edge/sessions.json                             the session registry (control.sessions)

Locks (asyncio, one edge process per container): a *thread lock* serialises
everything done in one worktree (git operations here, Claude runs later); a
*user lock* serialises what touches the shared clone (clone, worktree add,
fetch, push, which write shared refs and ``.git/config``). Always thread
lock first, then user lock, so the two never deadlock; different threads
run in parallel.

A clone is made in ``.project.tmp-*`` and renamed to ``project`` when
complete, so an interrupted clone is never mistaken for a usable one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, TypeVar

from aiohttp import web

from control.errors import git_failure
from control.gitcmd import GitError, GitRunner
from control.recovery import (
    HALF_CLONE_PREFIX,
    remove_half_clones,
    remove_half_worktree,
    remove_stale_locks,
    worktree_admin_dir,
)
from control.repourl import RepoUrl, RepoUrlError, parse_repo_url, repo_key
from control.sessions import SessionRegistry, ThreadSession
from control.settings import ControlSettings
from core.errors import Conflict, DomainError, Failed, Invalid, NotFound
from core.ids import ThreadRef, check_branch, check_id, check_thread_id, thread_branch
from core.jsonfile import read_json_file, write_json_atomic
from preview.locator import thread_folder

log = logging.getLogger(__name__)

T = TypeVar("T")
ACTIVE = ("waiting", "initializing", "cloning", "creating")


@dataclass
class ThreadState:
    """What ``/api/init`` is doing for a thread (kept in memory: progress changes often)."""

    status: str
    progress: str = ""
    error: str = ""
    updated: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def set(self, status: str, progress: str = "", error: str = "") -> None:
        self.status, self.progress, self.error, self.updated = status, progress, error, time.time()

    def set_progress(self, line: str) -> None:
        self.progress, self.updated = line, time.time()

    def as_json(self) -> dict:
        data = {"status": self.status, "progress": self.progress, "updated": self.updated}
        return {**data, "error": self.error} if self.error else data


@dataclass(frozen=True)
class InitResult:
    session: ThreadSession
    resumed: bool
    cloned: bool


class Workspaces:
    """Layout, locks, cloning and worktrees of every user's workspace."""

    def __init__(self, settings: ControlSettings, registry: SessionRegistry) -> None:
        self.settings = settings
        self.root = settings.workspace_path.absolute()
        self.registry = registry
        self.git = GitRunner(settings)
        self._user_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._thread_locks: weakref.WeakValueDictionary[ThreadRef, asyncio.Lock] = weakref.WeakValueDictionary()
        self._states: dict[ThreadRef, ThreadState] = {}
        self._tasks: set[asyncio.Task] = set()

    # Layout ---------------------------------------------------------------

    def user_dir(self, client_id: str, user_id: str) -> Path:
        return self.root / check_id("clientId", client_id) / check_id("userId", user_id)

    def project_dir(self, client_id: str, user_id: str) -> Path:
        return self.user_dir(client_id, user_id) / "project"

    def thread_path(self, key: ThreadRef) -> Path:
        """The worktree folder of a thread (whether or not it exists yet)."""
        client_id, user_id, thread_id = key
        thread = ThreadRef(check_id("clientId", client_id), check_id("userId", user_id), check_thread_id(thread_id))
        return thread_folder(self.root, thread)

    def context_path(self, key: ThreadRef) -> Path:
        client_id, user_id, thread_id = key
        return self.user_dir(client_id, user_id) / ".claude" / "threads" / f"{check_thread_id(thread_id)}.json"

    def metadata_path(self, client_id: str, user_id: str) -> Path:
        return self.user_dir(client_id, user_id) / "metadata.json"

    # Locks and states -----------------------------------------------------

    def user_lock(self, client_id: str, user_id: str) -> asyncio.Lock:
        """The lock for work on a user's shared clone (take a thread lock first, if any)."""
        return self._lock(self._user_locks, (client_id, user_id))

    def thread_lock(self, key: ThreadRef) -> asyncio.Lock:
        """The lock that serialises git operations and Claude runs in one thread's worktree."""
        return self._lock(self._thread_locks, key)

    @staticmethod
    def _lock(table: weakref.WeakValueDictionary, key: tuple) -> asyncio.Lock:
        lock = table.get(key)
        if lock is None:
            lock = table[key] = asyncio.Lock()
        return lock

    def state(self, key: ThreadRef) -> ThreadState | None:
        """What the last ``/api/init`` of this thread is doing or did (since the edge started)."""
        return self._states.get(key)

    async def run_detached(self, work: Awaitable[T]) -> T:
        """Run ``work`` to its end even if the HTTP client goes away (no half-done git work)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return await asyncio.shield(task)

    async def remove_worktree(self, key: ThreadRef) -> bool:
        """``git worktree remove --force`` of the thread's worktree (the path comes from the ids, not a file)."""
        worktree = self.thread_path(key)
        project = self.project_dir(key.client_id, key.user_id)
        async with self.thread_lock(key):
            async with self.user_lock(key.client_id, key.user_id):
                if not (project / ".git").is_dir() or not worktree.exists():
                    return False
                await self.git.run(["worktree", "remove", "--force", str(worktree)], cwd=project)
                await self.git.run(["worktree", "prune"], cwd=project)
        return True

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()

    @property
    def in_flight(self) -> int:
        """Operations running now (what ``drain`` waits for; idle shutdown counts them as activity)."""
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """Let running operations finish (at shutdown); cancel what is left after ``timeout``."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # Initialising a thread -----------------------------------------------

    def check_session_id(self, key: ThreadRef, session_id: str | None) -> str:
        """The session id the thread gets: ``session_id`` when free for it, else 409; None: the thread's own."""
        client_id, user_id, thread_id = key
        current = self.registry.session_id_of(key)
        if session_id is None or session_id == current:
            return current
        if self.registry.find(key) is not None:
            raise Conflict(f"thread {thread_id!r} of {client_id}/{user_id} already has the session {current!r}")
        other = self.registry.get(session_id)
        if other is not None:
            raise Conflict(f"session {session_id!r} already previews another thread ({other.thread_id!r})")
        return session_id

    async def init_thread(
        self,
        key: ThreadRef,
        repo: RepoUrl | None,
        *,
        session_id: str | None = None,
        start_point: str | None = None,
        user_email: str = "",
    ) -> InitResult:
        """Clone the user's repository if needed, then create or resume the thread's worktree.

        ``session_id`` names the thread's session (else the edge derives it); a
        new thread branches from ``start_point`` (a local branch) when it
        exists, else from the remote's default branch.
        """
        client_id, user_id, thread_id = key
        session_id = self.check_session_id(key, session_id)
        state = self._states[key] = ThreadState("waiting")
        try:
            async with self.thread_lock(key):
                async with self.user_lock(client_id, user_id):
                    state.set("initializing")
                    origin, cloned = await self._ensure_project(client_id, user_id, repo, state)
                    state.set("creating")
                    branch, resumed = await self._ensure_worktree(key, fresh=cloned, start_point=start_point)
                    default_branch = await self.default_branch(client_id, user_id)
                session = self._record(session_id, key, branch, origin, default_branch, user_email)
        except DomainError as exc:
            state.set("error", error=exc.message)
            raise
        except GitError as exc:
            state.set("error", error=exc.summary)
            raise
        except BaseException:
            state.set("error", error="interrupted")
            raise
        state.set("ready")
        log.info("thread %s/%s/%s ready on %s (resumed=%s)", client_id, user_id, thread_id, branch, resumed)
        return InitResult(session, resumed, cloned)

    async def _ensure_project(
        self, client_id: str, user_id: str, repo: RepoUrl | None, state: ThreadState
    ) -> tuple[str, bool]:
        user = self.user_dir(client_id, user_id)
        project = user / "project"
        if (project / ".git").is_dir():
            self.clear_shared_locks(client_id, user_id)
            origin = await self.checked_origin(client_id, user_id)
            if repo is not None and repo_key(origin) != repo_key(repo.url):
                raise Conflict(
                    f"this user's workspace is a clone of {self.git.scrub(origin)}, not {repo.url}",
                    hint="use another userId for another repository",
                )
            return origin, False
        if project.exists():
            raise Conflict(
                f"{project} exists but is not a git clone", hint="move it away and call /api/init again"
            )
        if repo is None:
            raise Invalid("repoUrl is required: this user has no clone yet")
        made = [d for d in (user.parent, user) if not d.exists()]
        user.mkdir(parents=True, exist_ok=True)
        remove_half_clones(user)
        tmp = user / f"{HALF_CLONE_PREFIX}{secrets.token_hex(4)}"
        state.set("cloning")
        try:
            await self.git.run(
                ["clone", "--filter=blob:none", "--no-checkout", "--progress", "--", repo.url, str(tmp)],
                cwd=user,
                progress=state.set_progress,
            )
            os.rename(tmp, project)
        except GitError as exc:
            raise git_failure(exc, "clone") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            if not project.exists():
                for folder in reversed(made):
                    _rmdir_if_empty(folder)
        log.info("cloned %s for %s/%s", repo.url, client_id, user_id)
        return repo.url, True

    async def _ensure_worktree(
        self, key: ThreadRef, *, fresh: bool, start_point: str | None = None
    ) -> tuple[str, bool]:
        client_id, user_id, thread_id = key
        project = self.project_dir(client_id, user_id)
        worktree = self.thread_path(key)
        branch = thread_branch(thread_id)
        remove_half_worktree(worktree, project / ".git")
        await self.git.run(["worktree", "prune"], cwd=project)
        if (worktree / ".git").is_file():
            if await self._is_worktree(worktree):
                return await self.current_branch(worktree) or branch, True
            raise Conflict(
                f"the worktree of thread {thread_id!r} is damaged",
                hint="move the thread folder away and call /api/init again",
            )
        if worktree.exists() and any(worktree.iterdir()):
            raise Conflict(
                f"{worktree} exists but is not a git worktree", hint="move it away and call /api/init again"
            )
        worktree.parent.mkdir(parents=True, exist_ok=True)
        try:
            if await self.ref_exists(project, f"refs/heads/{branch}"):
                await self.git.run(["worktree", "add", str(worktree), branch], cwd=project)
                return branch, True
            if not fresh:
                await self.checked_origin(client_id, user_id)
                await self.git.run(["fetch", "--prune", "origin"], cwd=project)
            if await self.ref_exists(project, f"refs/remotes/origin/{branch}"):
                await self.git.run(
                    ["worktree", "add", "--track", "-b", branch, str(worktree), f"refs/remotes/origin/{branch}"],
                    cwd=project,
                )
                return branch, True
            if start_point is not None and await self.ref_exists(project, f"refs/heads/{check_branch(start_point)}"):
                await self.git.run(
                    ["worktree", "add", "--no-track", "-b", branch, str(worktree), f"refs/heads/{start_point}"],
                    cwd=project,
                )
                return branch, False
            base = await self.default_branch(client_id, user_id)
            if not await self.ref_exists(project, f"refs/remotes/origin/{base}"):
                raise Conflict(
                    f"the default branch {base!r} does not exist on the remote", hint="set GIT_DEFAULT_BRANCH"
                )
            await self.git.run(
                ["worktree", "add", "--no-track", "-b", branch, str(worktree), f"refs/remotes/origin/{base}"],
                cwd=project,
            )
            return branch, False
        except GitError as exc:
            raise git_failure(exc, "creating the thread's worktree") from None

    async def _is_worktree(self, worktree: Path) -> bool:
        result = await self.git.run(["rev-parse", "--show-toplevel"], cwd=worktree, check=False)
        return result.returncode == 0 and os.path.realpath(result.stdout.strip()) == os.path.realpath(worktree)

    def _record(
        self,
        session_id: str,
        key: ThreadRef,
        branch: str,
        origin: str,
        default_branch: str,
        user_email: str = "",
    ) -> ThreadSession:
        client_id, user_id, thread_id = key
        now = time.time()
        worktree = str(self.thread_path(key))
        entry = ThreadSession(session_id, key, branch, origin, worktree, now, now, user_email=user_email)
        try:
            session = self.registry.put(entry)
        except ValueError as exc:  # a concurrent init named the thread or the session otherwise
            raise Conflict(str(exc)) from None
        context_path = self.context_path(key)
        context = read_json_file(context_path) or {"created": now}
        context.update(
            threadId=thread_id,
            clientId=client_id,
            userId=user_id,
            sessionId=session.session_id,
            branch=branch,
            worktree=worktree,
            repoUrl=origin,
            status="ready",
            updated=now,
        )
        write_json_atomic(context_path, context)
        metadata_path = self.metadata_path(client_id, user_id)
        metadata = read_json_file(metadata_path) or {"created": now}
        metadata.update(clientId=client_id, userId=user_id, repoUrl=origin, defaultBranch=default_branch, updated=now)
        write_json_atomic(metadata_path, metadata)
        return session

    # Helpers for git operations ------------------------------------------

    async def open_thread(self, key: ThreadRef) -> Path:
        """The worktree of an initialised thread, with stale lock files removed.

        Call with the thread lock held: then no git of ours works in it, and a
        lock file left there is one a killed process could not delete.
        """
        client_id, user_id, _ = key
        worktree = self.thread_path(key)
        if not (worktree / ".git").is_file():
            raise self.not_ready(key)
        common = self.project_dir(client_id, user_id) / ".git"
        admin = worktree_admin_dir(worktree, common)
        if admin is not None:
            locks = [admin / "index.lock", admin / "HEAD.lock", admin / "ORIG_HEAD.lock"]
            try:
                head = (admin / "HEAD").read_text().strip()
            except OSError:
                head = ""
            if head.startswith("ref: refs/heads/"):
                locks.append(common / (head[len("ref: ") :] + ".lock"))
            remove_stale_locks(locks, worktree)
        return worktree

    def not_ready(self, key: ThreadRef) -> DomainError:
        client_id, user_id, thread_id = key
        state = self.state(key)
        if state is not None and state.active:
            return Conflict(
                "the thread is being initialised; try again when /api/init has answered", **state.as_json()
            )
        return NotFound(
            f"thread {thread_id!r} of {client_id}/{user_id} is not initialised", hint="call POST /api/init first"
        )

    def clear_shared_locks(self, client_id: str, user_id: str) -> None:
        """Remove stale locks of the shared clone (call with the user lock held)."""
        common = self.project_dir(client_id, user_id) / ".git"
        names = ("config.lock", "packed-refs.lock", "index.lock", "HEAD.lock", "shallow.lock")
        remove_stale_locks([common / name for name in names], self.user_dir(client_id, user_id))

    async def checked_origin(self, client_id: str, user_id: str) -> str:
        """The clone's ``origin`` URL, checked against the policy again before any network use.

        The agent can edit ``.git/config``; a remote (or ``insteadOf``) pointing
        elsewhere must not receive the token or our pushes.
        """
        project = self.project_dir(client_id, user_id)
        urls = []
        for extra in ([], ["--push"]):
            result = await self.git.run(["remote", "get-url", *extra, "origin"], cwd=project)
            urls.append(result.stdout.strip())
        for url in urls:
            try:
                parse_repo_url(url, self.settings.git_allowed_hosts, self.settings.git_allow_local)
            except RepoUrlError as exc:
                raise Conflict(f"the workspace's remote 'origin' points to {self.git.scrub(url)!r}, "
                    f"which the edge does not use: {exc}",
                    hint="nothing was sent; restore the remote URL in project/.git/config",
                ) from None
        return urls[0]

    async def default_branch(self, client_id: str, user_id: str) -> str:
        """GIT_DEFAULT_BRANCH, else the branch the remote's HEAD names."""
        if self.settings.git_default_branch:
            try:
                return check_branch(self.settings.git_default_branch)
            except Invalid:
                raise Failed("GIT_DEFAULT_BRANCH is not a valid branch name") from None
        project = self.project_dir(client_id, user_id)
        for attempt in range(2):
            result = await self.git.run(
                ["symbolic-ref", "--quiet", "refs/remotes/origin/HEAD"], cwd=project, check=False
            )
            ref = result.stdout.strip()
            if result.returncode == 0 and ref.startswith("refs/remotes/origin/"):
                return ref[len("refs/remotes/origin/") :]
            if attempt == 0:
                await self.checked_origin(client_id, user_id)
                await self.git.run(["remote", "set-head", "origin", "--auto"], cwd=project, check=False)
        raise Conflict(
            "the remote has no default branch (is the repository empty?)",
            hint="push a first commit, or set GIT_DEFAULT_BRANCH",
        )

    async def ref_exists(self, repo: Path, ref: str) -> bool:
        result = await self.git.run(["show-ref", "--verify", "--quiet", ref], cwd=repo, check=False)
        return result.returncode == 0

    async def current_branch(self, worktree: Path) -> str | None:
        """The checked-out branch, None on a detached HEAD."""
        result = await self.git.run(["symbolic-ref", "--quiet", "--short", "HEAD"], cwd=worktree, check=False)
        return result.stdout.strip() or None if result.returncode == 0 else None


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


WORKSPACES = web.AppKey("control_workspaces", Workspaces)
