"""Session status and activity: the registry's entries seen live, and kept in DynamoDB.

A session's status is ``initializing`` or ``error`` while (or after) this
edge's ``/api/init`` of the thread is running or failed, else what the
registry holds: ``ready``, or ``idle`` once the edge stopped for inactivity
(until the session is used again). Activity comes from the proxy
(``SessionTable.last_activity``) and from API calls naming the thread
(``IdleWatch.session_activity``), both monotonic and in memory; a periodic
task folds them into the registry (one file write per period at most) and,
with DynamoDB, sends a heartbeat for sessions in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import AsyncIterator, Awaitable, TypeVar

from aiohttp import web

from control.dynamo import DYNAMO, DynamoWriter, session_item
from control.runs import RUNNER
from control.services import SESSION_SERVICE, EndedSession, SessionView
from control.sessions import REGISTRY, SessionRegistry, ThreadSession
from control.workspaces import WORKSPACES, Workspaces
from core.ids import ThreadRef, is_valid_id
from edge import keys
from edge.idle import IDLE, IdleWatch
from edge.routing import SessionTable
from edge.websocket import SOCKETS
from preview.appkeys import PREVIEWS
from preview.supervisor import RUNNING, PreviewState

log = logging.getLogger(__name__)

T = TypeVar("T")
FLUSH_SECONDS = 30.0  # activity reaches sessions.json at most this late (and at shutdown)


def iso_seconds(epoch: float) -> str | None:
    """ISO-8601 UTC to the second (``2025-01-31T12:00:00Z``); None for no time."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# One fixed offset from the monotonic clock to wall time: converting with a fresh
# time.time() each call jitters, and jitter would look like new activity.
_WALL_OFFSET = time.time() - time.monotonic()


def _wall(monotonic: float | None) -> float:
    return monotonic + _WALL_OFFSET if monotonic else 0.0


class SessionTracker:
    """Live status, last activity and the DynamoDB copy of every registered session."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.settings = app[keys.SETTINGS]
        self.registry: SessionRegistry = app[REGISTRY]
        self.workspaces: Workspaces = app[WORKSPACES]
        self.table: SessionTable = app[keys.SESSIONS]
        self.idle: IdleWatch = app[IDLE]
        self.writer: DynamoWriter | None = app.get(DYNAMO)
        self._beaten: dict[str, float] = {}  # activity already sent by a heartbeat
        self._published: dict[str, dict] = {}  # the last item queued per session (to expire it on removal)
        for session in self.registry.all():  # sessions of earlier runs are published once used again
            self._beaten[session.session_id] = self.last_activity(session)

    # -- what a session looks like now ----------------------------------------------------

    def status(self, session: ThreadSession) -> str:
        state = self.workspaces.state(session.thread)
        if state is not None and state.active:
            return "initializing"
        if state is not None and state.status == "error":
            return "error"
        return session.status

    def last_activity(self, session: ThreadSession) -> float:
        """Wall-clock time of the session's last use (its init, if never used since)."""
        sid = session.session_id
        live = max(_wall(self.table.last_activity.get(sid)), _wall(self.idle.session_activity.get(sid)))
        return max(session.last_activity, live) or session.updated

    def preview_state(self, session_id: str) -> str:
        previews = self.app.get(PREVIEWS)
        preview = previews.get(session_id) if previews is not None else None
        return preview.state.value if preview is not None else PreviewState.STOPPED.value

    def view(self, session: ThreadSession) -> SessionView:
        """A session as the API lists it."""
        route = self.table.get(session.session_id)
        last = self.last_activity(session)
        return SessionView(
            session.thread,
            session.session_id,
            repo_url=self.workspaces.git.scrub(session.repo_url),
            branch=session.branch,
            worktree=session.worktree,
            status=self.status(session),
            preview_url=session.preview_url or None,
            preview_state=self.preview_state(session.session_id),
            route_state=route.state.value if route else None,
            created=iso_seconds(session.created),
            last_activity=iso_seconds(last),
            last_activity_epoch=round(last, 3),
        )

    # -- DynamoDB -------------------------------------------------------------------------

    def publish(self, session: ThreadSession, status: str | None = None) -> None:
        """Queue the session's state for DynamoDB (Hermes' item shape: ``control.dynamo``)."""
        if self.writer is None:
            return
        item = session_item(
            session.session_id,
            session.thread,
            status or self.status(session),
            session.preview_url,
            self.settings.container_id,
            self.last_activity(session),
            user_key=session.user_email,
            branch=session.branch,
            created=session.created,
        )
        self._published[session.session_id] = item
        self.writer.put(item)

    def registry_changed(self, session_id: str, session: ThreadSession | None) -> None:
        if session is None:
            self._beaten.pop(session_id, None)
            last = self._published.pop(session_id, None)
            if self.writer is not None and last is not None:
                self.writer.expire(session_id, {**last, "lastActivity": int(time.time() * 1000)})
        else:
            self.publish(session)

    async def track_init(self, sid: str, key: ThreadRef, preview_url: str, work: Awaitable[T], user_email: str = "") -> T:
        """Run an ``/api/init`` of session ``sid``, announcing ``initializing`` first and ``ready`` or ``error`` after."""
        known = self.registry.get(sid)
        draft = known or ThreadSession(sid, key, "", "", "", time.time(), time.time(), user_email=user_email)
        self.publish(draft, "initializing")
        try:
            result = await work
        except BaseException:
            current = self.registry.get(sid)
            self.publish(current or draft, "error")
            raise
        self.registry.update(sid, status="ready", preview_url=preview_url, last_activity=time.time())
        return result

    # -- ending a session -------------------------------------------------------------------

    def known(self, sid: str) -> bool:
        """True for a session that is registered, routed or previewed."""
        previews = self.app.get(PREVIEWS)
        return self.registry.get(sid) is not None or self.table.get(sid) is not None or (
            previews is not None and previews.get(sid) is not None
        )

    async def end(self, sid: str, purge: bool) -> EndedSession:
        """Stop and forget a session: its preview, route, sockets, activity and registry entry; ``purge``: its worktree."""
        previews = self.app.get(PREVIEWS)
        stopped = await previews.forget(sid, "session deleted through the API") if previews is not None else False
        await self.table.remove(sid)  # closes the session's WebSockets
        self.table.last_activity.pop(sid, None)
        self.idle.session_activity.pop(sid, None)
        session = self.registry.get(sid)
        purged = False
        if session is not None and purge:
            purged = await self.workspaces.remove_worktree(session.thread)
        self.registry.remove(sid)
        return EndedSession(sid, stopped, purged)

    # -- activity ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Fold in-memory activity into the registry; a used ``idle`` session is ``ready`` again."""
        for session in self.registry.all():
            when = self.last_activity(session)
            if self.registry.note_activity(session.session_id, when) and session.status == "idle":
                live = max(self.table.last_activity.get(session.session_id, 0), self.idle.session_activity.get(session.session_id, 0))
                if live:
                    self.registry.update(session.session_id, status="ready")
        self.registry.flush()

    def heartbeat(self) -> None:
        """Re-send sessions used since the last heartbeat, or with a preview running."""
        if self.writer is None:
            return
        for session in self.registry.all():
            sid, when = session.session_id, self.last_activity(session)
            previews = self.app.get(PREVIEWS)
            preview = previews.get(sid) if previews is not None else None
            if when > self._beaten.get(sid, 0.0) or (preview is not None and preview.state in RUNNING):
                self._beaten[sid] = when
                self.publish(session)

    async def mark_all_idle(self) -> None:
        """Before an idle shutdown: every session becomes ``idle`` (registry and DynamoDB)."""
        self.sync()
        for session in self.registry.all():
            self.registry.update(session.session_id, status="idle")

    async def run(self) -> None:
        beat = self.settings.dynamodb_heartbeat_seconds
        period = min(FLUSH_SECONDS, beat) if self.writer is not None and beat > 0 else FLUSH_SECONDS
        period = max(0.2, period)
        last_beat = time.monotonic()
        while True:
            await asyncio.sleep(period)
            try:
                self.sync()
                if self.writer is not None and beat > 0 and time.monotonic() - last_beat >= beat:
                    last_beat = time.monotonic()
                    self.heartbeat()
            except Exception:
                log.exception("session activity sync failed")

    def session_of(self, request: web.Request) -> str | None:
        """The registered session an API request names with ``<clientId>/<userId>/<threadId>``."""
        info = request.match_info
        ids = (info.get("client_id"), info.get("user_id"), info.get("thread_id"))
        if not all(is_valid_id(part) for part in ids):
            return None
        sid = self.registry.session_id_of(ThreadRef(*ids))  # type: ignore[arg-type]
        return sid if self.registry.get(sid) is not None else None


TRACKER = web.AppKey("edge_session_tracker", SessionTracker)


def _busy_previews(app: web.Application) -> bool:
    previews = app.get(PREVIEWS)
    if previews is None:
        return False
    return any(p.state in (PreviewState.INSTALLING, PreviewState.STARTING) for p in previews.previews.values())


async def tracker_ctx(app: web.Application) -> AsyncIterator[None]:
    """The periodic activity sync; at the end the last activity is written and DynamoDB sees ``expired``."""
    tracker = app[TRACKER]
    task = asyncio.create_task(tracker.run(), name="session activity")
    yield
    task.cancel()
    await asyncio.wait({task})
    tracker.sync()  # the last activity reaches the file (and, through the writer's flush, DynamoDB)
    if tracker.writer is not None:  # this container no longer serves them: Hermes sees "expired"
        for session in tracker.registry.all():
            if session.session_id in tracker._published:
                tracker.publish(session, "expired")


def setup(app: web.Application) -> SessionTracker:
    """Track sessions (after control's and the idle watch's setup; DynamoDB's writer if configured).

    Register before the previews (``edge.previews.setup``): clean-up runs in reverse, so the last
    activity is written after the previews have stopped.
    """
    tracker = SessionTracker(app)
    app[TRACKER] = tracker
    app[SESSION_SERVICE] = tracker  # what control's handlers see of it
    tracker.registry.on_change(tracker.registry_changed)
    idle = app[IDLE]
    idle.session_of = tracker.session_of
    idle.before_stop.append(tracker.mark_all_idle)
    idle.busy_checks["websockets"] = lambda: app[SOCKETS].count() > 0
    idle.busy_checks["workspaces"] = lambda: tracker.workspaces.in_flight > 0
    idle.busy_checks["previews"] = lambda: _busy_previews(app)
    runner = app.get(RUNNER)
    if runner is not None:
        idle.busy_checks["executions"] = lambda: runner.busy
    app.cleanup_ctx.append(tracker_ctx)
    return tracker
