"""Opening threads on demand: ``/api/init``, Hermes' first call and sessions Hermes named.

Hermes never calls ``/api/init``. Its first instruction (``POST /api/execute``
with the instruction alone) works on the default thread (DEFAULT_THREAD_ID of
DEFAULT_CLIENT_ID/DEFAULT_USER_ID), and its later ones name a session by its
own uuid: such a session becomes a thread of the default user whose thread id
and session id are that uuid, branched from the default thread (so the first
instruction's change is in it). Either comes from the user's existing clone,
or from DEFAULT_REPO_URL when there is none; with neither, a clear 404.

Hermes emails the preview link of its own session right after the first
instruction, before any call names that session: such a link shows the
default thread's preview (``preview_alias``) until the session's first
execute gives it a thread of its own. Only uuid-shaped ids are taken as
Hermes' and, with DYNAMODB_TABLE, only those Hermes has an item for; the
alias never creates a worktree or a dev server of its own.

One opening per thread at a time: concurrent first calls for one session
wait for the same initialisation (one thread, one registry entry).
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from control.dynamo import DYNAMO
from control.repourl import RepoUrl, RepoUrlError, parse_repo_url
from control.services import SESSION_SERVICE
from control.workspaces import WORKSPACES, InitResult
from core.errors import Failed, NotFound
from core.ids import ThreadRef, check_id, check_thread_id, thread_branch


async def initialise(
    app: web.Application,
    key: ThreadRef,
    repo: RepoUrl | None,
    *,
    origin: str,
    session_id: str | None = None,
    start_point: str | None = None,
    user_email: str = "",
) -> InitResult:
    """Clone if needed and create or resume the thread, announced to the session service (registry, DynamoDB)."""
    ws = app[WORKSPACES]
    sid = ws.check_session_id(key, session_id)
    work = ws.init_thread(key, repo, session_id=sid, start_point=start_point, user_email=user_email)
    sessions = app.get(SESSION_SERVICE)
    if sessions is not None:  # status initializing → ready/error, in the registry and DynamoDB
        work = sessions.track_init(sid, key, f"{origin}/session/{sid}/", work, user_email)
    return await ws.run_detached(work)


HERMES_SESSION = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class ThreadOpener:
    """Opens threads that callers use before any ``/api/init`` (single flight per thread)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app[WORKSPACES].settings
        self._opening: dict[ThreadRef, asyncio.Future[None]] = {}

    def default_key(self, thread_id: str | None = None) -> ThreadRef:
        """The default user's thread (DEFAULT_THREAD_ID when none is named)."""
        return ThreadRef(
            check_id("clientId", self.settings.default_client_id),
            check_id("userId", self.settings.default_user_id),
            check_thread_id(thread_id or self.settings.default_thread_id),
        )

    async def default_thread(self, origin: str) -> ThreadRef:
        """The default thread, opened if it is not there yet (Hermes' first instruction)."""
        key = self.default_key()
        await self.ensure(key, origin=origin)
        return key

    async def hermes_session(self, session_id: str, origin: str, user_email: str = "") -> ThreadRef:
        """The thread of a session Hermes named; an unknown one becomes a thread of the default user."""
        registry = self.app[WORKSPACES].registry
        known = registry.get(session_id)
        if known is not None:
            return known.thread
        key = self.default_key(session_id)
        start = thread_branch(self.settings.default_thread_id)
        await self.ensure(key, origin=origin, session_id=session_id, start_point=start, user_email=user_email)
        return key

    async def preview_alias(self, session_id: str) -> str | None:
        """The session whose preview a not-yet-known Hermes session shows (the default thread's), or None."""
        registry = self.app[WORKSPACES].registry
        if registry.get(session_id) is not None or not HERMES_SESSION.fullmatch(session_id):
            return None
        default = registry.find(self.default_key())
        if default is None:
            return None
        writer = self.app.get(DYNAMO)
        if writer is not None and not await writer.has_session(session_id):
            return None
        return default.session_id

    async def ensure(self, key: ThreadRef, *, origin: str, **init: str) -> None:
        """Open the thread unless it is there (or being opened: then wait for that)."""
        ws = self.app[WORKSPACES]
        registered = ws.registry.find(key)
        if registered is not None and (ws.thread_path(key) / ".git").is_file():
            return
        running = self._opening.get(key)
        if running is None:
            running = asyncio.ensure_future(self._open(key, origin, init))
            self._opening[key] = running
            running.add_done_callback(lambda _: self._opening.pop(key, None))
        await asyncio.shield(running)

    async def _open(self, key: ThreadRef, origin: str, init: dict[str, str]) -> None:
        ws = self.app[WORKSPACES]
        repo = None
        if not (ws.project_dir(key.client_id, key.user_id) / ".git").is_dir():
            repo = self._default_repo()
        await initialise(self.app, key, repo, origin=origin, **init)

    def _default_repo(self) -> RepoUrl:
        raw = self.settings.default_repo_url
        if not raw:
            raise NotFound(
                "Session not found: this editing environment has no website repository yet",
                hint="set DEFAULT_REPO_URL, or call POST /api/init with a repoUrl first",
            )
        try:
            return parse_repo_url(raw, self.settings.git_allowed_hosts, self.settings.git_allow_local)
        except RepoUrlError as exc:
            raise Failed(f"DEFAULT_REPO_URL is not usable: {exc}") from None


THREADS = web.AppKey("control_thread_opener", ThreadOpener)
