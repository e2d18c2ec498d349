"""Claude runs on threads: one at a time per thread, progress events, plans awaiting approval.

A run is a task of its own (not the HTTP handler's), so a client that goes
away does not stop it; clients follow its events (``Run.follow``) or await
its end. The executor works under the thread's lock and inside
EXECUTION_TIMEOUT; a cancel stops only the executor (its process group ends,
files stay as last written) and never a commit in progress. After a
successful run with autoCommit, the changes are committed by
``gitops.commit`` (Thread-ID trailer, push with GIT_AUTO_PUSH) once the
executor has released the lock; the thread stays busy (409) until then.

Each run is recorded in the thread context file (unknown keys kept): the
instruction, mode, summary, files, commit and timings, and for claude-code
the agent's session id, which the next run resumes (``--resume``).

Plans are kept in ``WORKSPACE_PATH/.edge/plans.json`` (``PlanStore``): each is
approved or rejected once, with the edge's token or Hermes' own, and expires
after PLAN_TTL_SECONDS.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Callable

from aiohttp import web

from control import gitops
from control.executors import ExecutionError, Executor, RunRequest, RunResult
from control.workspaces import Workspaces
from core.errors import Conflict, DomainError, Gone, Invalid, NotFound, http_status
from core.ids import ThreadRef
from core.jsonfile import read_json_file, write_json_atomic

log = logging.getLogger(__name__)

PLANS_FILE = Path(".edge") / "plans.json"
MAX_HISTORY = 50  # instructions kept in the context file
PROMPT_HISTORY = 5  # instructions summarised in the next prompt
COMMIT_SUBJECT = 72

# Instructions that delete or reset get a plan first (the owner approves it). Deliberately
# broad: asking once too often costs a click, deleting without asking can cost a site.
DESTRUCTIVE = re.compile(
    r"\b(delete|deletes|deleting|remove|removes|removing|erase|wipe|reset|revert|drop|destroy|purge|truncate|rm)\b",
    re.IGNORECASE,
)


def is_destructive(instruction: str) -> bool:
    return DESTRUCTIVE.search(instruction) is not None


def iso_millis(ts: float) -> str:
    """ISO-8601 UTC to the millisecond (``2025-01-31T12:00:00.123Z``)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def commit_message(instruction: str) -> str:
    line = " ".join(instruction.split())
    budget = COMMIT_SUBJECT - len("Claude: ")
    return "Claude: " + (line if len(line) <= budget else line[: budget - 1].rstrip() + "…")


@dataclass(frozen=True)
class PlanOffer:
    """A plan a plan-only run proposes, and the token that approves it."""

    plan: str
    plan_id: str
    approval_token: str
    expires_at: str


@dataclass(frozen=True)
class RunReport:
    """What a finished run did: its outcome, the files it changed, its commit, its HTTP status."""

    success: bool
    output: str
    summary: str
    file_changes: list[dict]  # {"file": ..., "action": "added" | "modified" | "deleted" | "reverted"}
    mode: str
    duration_ms: int
    run_id: str
    started_at: str
    thread: ThreadRef
    session_id: str
    plan_only: bool
    commit: gitops.CommitResult | None  # None: nothing to commit, or no autoCommit
    cancelled: bool
    status: int
    error: str | None = None
    agent_session_id: str | None = None
    cost_usd: float | None = None
    plan: PlanOffer | None = None

    @property
    def files_changed(self) -> list[str]:
        return [change["file"] for change in self.file_changes]

    def as_json(self) -> dict:
        """The API's shape (keys in the order clients have always seen; ``status`` is the HTTP status)."""
        data = {
            "success": self.success,
            "output": self.output,
            "summary": self.summary,
            "filesChanged": self.files_changed,
            "changes": [change_line(change) for change in self.file_changes],
            "fileChanges": self.file_changes,
            "mode": self.mode,
            "durationMs": self.duration_ms,
            "runId": self.run_id,
            "startedAt": self.started_at,
            "clientId": self.thread.client_id,
            "userId": self.thread.user_id,
            "threadId": self.thread.thread_id,
            "sessionId": self.session_id,
            "planOnly": self.plan_only,
            "commit": self.commit.as_json() if self.commit is not None else None,
            "cancelled": self.cancelled,
            "status": self.status,
        }
        if self.error:
            data["error"] = self.error
        if self.agent_session_id:
            data["agentSessionId"] = self.agent_session_id
        if self.cost_usd is not None:
            data["costUsd"] = self.cost_usd
        if self.plan is not None:
            data.update(
                plan=self.plan.plan, planId=self.plan.plan_id, approvalToken=self.plan.approval_token,
                requiresApproval=True, expiresAt=self.plan.expires_at, summary=PLAN_SUMMARY,
            )
        return data


@dataclass
class Run:
    """One execution on one thread, and the events it produced so far."""

    run_id: str
    thread: ThreadRef
    instruction: str
    plan_only: bool
    auto_commit: bool
    approved_plan: str | None = None
    started: float = field(default_factory=time.time)
    events: list[dict] = field(default_factory=list)
    result: RunReport | None = None
    task: asyncio.Task | None = None
    exec_task: asyncio.Task | None = None
    cancel_requested: bool = False
    failure_status: int = 502  # the HTTP status of a failed run: 504 timeout, 409 cancelled
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, event: dict) -> None:
        self.events.append({"seq": len(self.events), "time": time.time(), "runId": self.run_id, **event})
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def follow(self) -> AsyncIterator[dict]:
        """Every event from the first, then each new one, until the run is over."""
        seen = 0
        while True:
            wake = self._wake
            while seen < len(self.events):
                seen += 1
                yield self.events[seen - 1]
            if self.result is not None:
                return
            await wake.wait()

    def cancel(self) -> bool:
        """Stop the executor (not a commit in progress); False when there is nothing to stop."""
        if self.result is not None or self.cancel_requested:
            return False
        self.cancel_requested = True
        if self.exec_task is not None:
            self.exec_task.cancel()
        return True


@dataclass
class Plan:
    """A plan awaiting approval. Its tokens are kept as SHA-256 hashes only (never on disk in clear)."""

    plan_id: str
    thread: ThreadRef
    instruction: str
    plan: str
    auto_commit: bool
    created: float
    expires: float
    token_hashes: list[str] = field(default_factory=list)
    used: str = ""  # "", "approved" or "rejected"

    def as_json(self) -> dict:
        return {
            "planId": self.plan_id, "clientId": self.thread.client_id, "userId": self.thread.user_id,
            "threadId": self.thread.thread_id,
            "instruction": self.instruction, "plan": self.plan, "autoCommit": self.auto_commit,
            "created": self.created, "expires": self.expires, "tokenHashes": self.token_hashes, "used": self.used,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        return cls(
            str(data["planId"]), ThreadRef(str(data["clientId"]), str(data["userId"]), str(data["threadId"])),
            str(data["instruction"]), str(data["plan"]), bool(data["autoCommit"]),
            float(data["created"]), float(data["expires"]),
            [str(h) for h in data.get("tokenHashes") or []], str(data.get("used") or ""),
        )

    def summary(self) -> dict:
        """What a caller may see of a plan (never its tokens)."""
        return {"planId": self.plan_id, "instruction": self.instruction[:200], "createdAt": iso_millis(self.created),
                "expiresAt": iso_millis(self.expires)}


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class PlanStore:
    """Plans awaiting approval, persisted in ``WORKSPACE_PATH/.edge/plans.json`` (so a restart loses none).

    A token the edge issued names its plan. Hermes discards that token and
    approves with one it made itself: an unknown token then acts on the
    session's single pending plan and is bound to it, so it cannot be used
    again (several pending: 409; none: 404). A plan is approved or rejected
    once; used and expired plans answer 410 for a while, then are forgotten.
    """

    def __init__(self, ttl: float, path: Path | None = None) -> None:
        self.ttl = ttl
        self.path = path
        self._plans: dict[str, Plan] = {}
        self._by_token: dict[str, str] = {}
        data = read_json_file(path) if path is not None else None
        for entry in (data or {}).get("plans") or []:
            try:
                self._keep(Plan.from_json(entry))
            except (KeyError, TypeError, ValueError):
                log.warning("ignoring a malformed plan in %s", path)
        self._prune()

    def add(self, run: Run, plan: str) -> tuple[Plan, str]:
        """Store a new plan; returns it and its token (the only time the token exists in clear)."""
        self._prune()
        now = time.time()
        token = secrets.token_urlsafe(24)
        entry = Plan(
            secrets.token_hex(8), run.thread,
            run.instruction, plan, run.auto_commit, now, now + self.ttl, [_token_hash(token)],
        )
        self._keep(entry)
        self._save()
        return entry, token

    def pending(self, key: ThreadRef) -> list[Plan]:
        now = time.time()
        return [p for p in self._plans.values() if p.thread == key and not p.used and now < p.expires]

    def resolve(self, token: object, key: ThreadRef) -> Plan:
        """The usable plan a token names on this thread (binding an unknown token to the single pending plan).

        404 unknown (or another thread's) with nothing pending, 409 several pending, 410 used or expired.
        """
        if not isinstance(token, str) or not token:
            raise Invalid("approvalToken is required")
        digest = _token_hash(token)
        plan = self._plans.get(self._by_token.get(digest, ""))
        if plan is None or plan.thread != key:
            pending = self.pending(key)
            if not pending:
                raise NotFound("no plan is waiting for approval in this session (it may have expired)")
            if len(pending) > 1:
                raise Conflict(
                    "several plans are waiting in this session; approve one with the approvalToken the edge gave it",
                    plans=[p.summary() for p in sorted(pending, key=lambda p: p.created)],
                )
            plan = pending[0]
            plan.token_hashes.append(digest)
            self._by_token[digest] = plan.plan_id
            self._save()
        if plan.used:
            raise Gone(f"this plan was already {plan.used}", planId=plan.plan_id)
        if time.time() >= plan.expires:
            raise Gone("this plan has expired; ask for a new plan", expiredAt=iso_millis(plan.expires))
        return plan

    def mark(self, plan: Plan, outcome: str) -> None:
        """Spend a plan (``approved`` or ``rejected``): it can never run again."""
        plan.used = outcome
        self._save()

    def _keep(self, plan: Plan) -> None:
        self._plans[plan.plan_id] = plan
        for digest in plan.token_hashes:
            self._by_token[digest] = plan.plan_id

    def _prune(self) -> None:
        # Used and expired plans are kept a while longer so that their tokens answer 410, not 404.
        horizon = time.time() - max(self.ttl, 600.0)
        for plan in [p for p in self._plans.values() if p.expires < horizon]:
            del self._plans[plan.plan_id]
            for digest in plan.token_hashes:
                self._by_token.pop(digest, None)

    def _save(self) -> None:
        if self.path is None:
            return
        write_json_atomic(self.path, {"version": 1, "plans": [p.as_json() for p in self._plans.values()]})
        os.chmod(self.path, 0o600)


def _digest(path: Path) -> str | None:
    """A changed file's content hash; a symlink by its target (never followed: it could point at
    /dev/zero), anything else that is not a regular file (a FIFO would block) by None."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            return "link:" + os.readlink(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Runner:
    """Starts runs, keeps the running one per thread, records them, commits their changes."""

    def __init__(self, ws: Workspaces, executor: Executor) -> None:
        self.ws = ws
        self.settings = ws.settings
        self.executor = executor
        self.plans = PlanStore(self.settings.plan_ttl_seconds, ws.root / PLANS_FILE)
        self._active: dict[ThreadRef, Run] = {}
        self._last: dict[ThreadRef, RunReport] = {}  # each thread's last result (status after "inProgress")
        self._tasks: set[asyncio.Task] = set()
        # Told of each finished run (mode, success, seconds): the edge's metrics.
        self.observer: Callable[[str, bool, float], None] | None = None

    @property
    def busy(self) -> bool:
        """Whether any run is still going (idle shutdown waits for it)."""
        return bool(self._tasks)

    def active(self, key: ThreadRef) -> Run | None:
        """The thread's running run, if any."""
        return self._active.get(key)

    def last_result(self, key: ThreadRef) -> RunReport | None:
        """The thread's last finished run since the edge started (Hermes' status after an ``inProgress``)."""
        return self._last.get(key)

    def check_idle(self, key: ThreadRef) -> None:
        """409 when Claude is already working on the thread."""
        running = self.active(key)
        if running is not None:
            raise Conflict(
                "Claude is already working on this thread; wait for it, or cancel it",
                startedAt=iso_millis(running.started),
                runId=running.run_id,
                instruction=running.instruction[:200],
            )

    def start(
        self, key: ThreadRef, instruction: str, *,
        plan_only: bool = False, auto_commit: bool = True, approved_plan: str | None = None,
    ) -> Run:
        """Start a run now (synchronously claims the thread: a second start gets 409)."""
        self.check_idle(key)
        run = Run(secrets.token_hex(8), key, instruction, plan_only, auto_commit, approved_plan)
        self._active[run.thread] = run
        run.task = asyncio.ensure_future(self._run(run))
        self._tasks.add(run.task)
        run.task.add_done_callback(self._tasks.discard)
        return run

    def approve(self, token: object, key: ThreadRef) -> Run:
        """Execute exactly the stored plan (the plan is spent only when the run starts)."""
        plan = self.plans.resolve(token, key)
        self.check_idle(key)
        self.plans.mark(plan, "approved")
        return self.start(key, plan.instruction, auto_commit=plan.auto_commit, approved_plan=plan.plan)

    def reject(self, token: object, key: ThreadRef) -> Plan:
        plan = self.plans.resolve(token, key)
        self.plans.mark(plan, "rejected")
        return plan

    async def drain(self, timeout: float) -> None:
        """At shutdown: let runs finish, then cancel the rest (their processes end with them)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if pending:
            for run in list(self._active.values()):
                run.cancel()
            _, pending = await asyncio.wait(pending, timeout=10)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    # The run itself --------------------------------------------------------

    async def _run(self, run: Run) -> RunReport:
        begin = time.monotonic()
        run.emit({"type": "started", "mode": self.executor.name, "startedAt": iso_millis(run.started),
                  "planOnly": run.plan_only, "instruction": run.instruction})
        try:
            result = await self._execute(run, begin)
        except DomainError as exc:
            result = self._result(run, begin, RunResult(False, "", exc.message), [], None, http_status(exc))
        except Exception:
            log.exception("Claude run %s failed unexpectedly", run.run_id)
            result = self._result(run, begin, RunResult(False, "", "internal error in the edge"), [], None, 500)
        finally:
            self._active.pop(run.thread, None)
        if self.observer is not None:
            self.observer(self.executor.name, result.success, time.monotonic() - begin)
        run.result = result
        self._last[run.thread] = result
        run.emit({"type": "done" if result.success else "error", "result": result.as_json()})
        return result

    async def _execute(self, run: Run, begin: float) -> RunReport:
        async with self.ws.thread_lock(run.thread):
            worktree = await self.ws.open_thread(run.thread)
            context = read_json_file(self.ws.context_path(run.thread)) or {}
            before = await self._snapshot(worktree)
            request = RunRequest(
                instruction=run.instruction,
                worktree=worktree,
                plan_only=run.plan_only,
                approved_plan=run.approved_plan,
                history=_history(context),
                resume_session=context.get("claudeSessionId") if self.executor.name == "claude-code" else None,
                agent_home=self.ws.user_dir(run.thread.client_id, run.thread.user_id) / ".claude" / "home",
            )
            outcome = await self._call_executor(run, request)
            after = await self._snapshot(worktree)
        changes = _changes(before, after)
        commit = None
        if outcome.success and run.auto_commit and changes and not run.plan_only:
            commit = await asyncio.shield(self._commit(run))
            if commit.committed:
                run.emit({"type": "committed", "commit": commit.commit, "files": commit.files})
        result = self._result(run, begin, outcome, changes, commit, 200 if outcome.success else run.failure_status)
        if run.plan_only and outcome.success:
            plan, token = self.plans.add(run, outcome.output)
            result = replace(result, plan=PlanOffer(plan.plan, plan.plan_id, token, iso_millis(plan.expires)))
        self._record(run, outcome, result)
        return result

    async def _call_executor(self, run: Run, request: RunRequest) -> RunResult:
        run.exec_task = asyncio.ensure_future(self.executor.run(request, run.emit))
        if run.cancel_requested:
            run.exec_task.cancel()
        timeout = self.settings.execution_timeout
        try:
            async with asyncio.timeout(timeout or None):
                return await run.exec_task
        except TimeoutError:
            run.failure_status = 504
            return RunResult(False, "", f"the run timed out after {timeout:g} s (EXECUTION_TIMEOUT); it was stopped")
        except ExecutionError as exc:
            return RunResult(False, "", str(exc))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if run.cancel_requested and current is not None and not current.cancelling():
                run.failure_status = 409
                return RunResult(False, "", "cancelled on request; files are as the agent last wrote them")
            raise

    async def _commit(self, run: Run) -> gitops.CommitResult:
        try:
            return await gitops.commit(self.ws, run.thread, commit_message(run.instruction))
        except DomainError as exc:
            return gitops.CommitResult(False, None, None, "", error=exc.message)

    async def _snapshot(self, worktree: Path) -> dict[str, tuple[str, str | None]]:
        """Changed paths (vs. HEAD) → (kind, hash of content): what a run changed is the difference."""
        status = await self.ws.git.run(
            ["--no-optional-locks", "status", "--porcelain=v2", "-z", "--untracked-files=all"], cwd=worktree
        )
        _, changes = gitops.parse_status(status.stdout)
        listed = [(path, kind) for kind, paths in changes.items() for path in paths]
        # In a thread: a large file must not stall the event loop.
        return await asyncio.to_thread(lambda: {path: (kind, _digest(worktree / path)) for path, kind in listed})

    def _result(
        self, run: Run, begin: float, outcome: RunResult, changes: list[dict], commit: gitops.CommitResult | None,
        status: int,
    ) -> RunReport:
        return RunReport(
            success=outcome.success,
            output=outcome.output,
            summary=run_summary(outcome, changes, commit, cancelled=run.cancel_requested),
            file_changes=changes,
            mode=self.executor.name,
            duration_ms=int((time.monotonic() - begin) * 1000),
            run_id=run.run_id,
            started_at=iso_millis(run.started),
            thread=run.thread,
            session_id=self.ws.registry.session_id_of(run.thread),
            plan_only=run.plan_only,
            commit=commit,
            cancelled=run.cancel_requested and not outcome.success,
            status=status,
            error=outcome.error,
            agent_session_id=outcome.session_id,
            cost_usd=outcome.cost_usd,
        )

    def _record(self, run: Run, outcome: RunResult, result: RunReport) -> None:
        path = self.ws.context_path(run.thread)
        context = read_json_file(path) or {}
        entries = context.get("instructions") if isinstance(context.get("instructions"), list) else []
        entries.append({
            "runId": run.run_id,
            "instruction": run.instruction,
            "mode": result.mode,
            "planOnly": run.plan_only,
            "approvedPlan": run.approved_plan is not None,
            "success": outcome.success,
            "summary": outcome.output[:2000],
            "error": outcome.error,
            "files": result.files_changed,
            "commit": result.commit.commit if result.commit is not None and result.commit.committed else None,
            "startedAt": result.started_at,
            "durationMs": result.duration_ms,
        })
        context["instructions"] = entries[-MAX_HISTORY:]
        if outcome.session_id:
            context["claudeSessionId"] = outcome.session_id
        context["lastExecution"] = time.time()
        write_json_atomic(path, context)


_ACTIONS = {"added": "Added", "modified": "Modified", "deleted": "Deleted", "reverted": "Reverted"}
SUMMARY_MAX = 600


def change_line(change: dict) -> str:
    """One change as a line a person reads (Hermes puts each into its email): ``Modified: src/x.astro``."""
    return f"{_ACTIONS.get(change['action'], change['action'].capitalize())}: {change['file']}"


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def run_summary(
    outcome: RunResult, changes: list[dict], commit: gitops.CommitResult | None, *, cancelled: bool = False
) -> str:
    """What happened, in words a site owner reads in an email."""
    if not outcome.success:
        if cancelled:
            return "The change was stopped before it finished; nothing was saved."
        return _sentence(f"I could not complete this change: {outcome.error or 'the assistant reported an error'}")
    said = _sentence(outcome.output) if outcome.output.strip() else ""
    if said:
        return said
    if not changes:
        return "Done; no files needed to change."
    files = ", ".join(change["file"] for change in changes[:5]) + (" and more" if len(changes) > 5 else "")
    saved = " and saved it" if commit is not None and commit.committed else ""
    return f"I updated {files}{saved}. The preview shows the result."


PLAN_SUMMARY = "I have a plan for this change and will wait for your approval before making it."


def _history(context: dict) -> str:
    entries = context.get("instructions")
    if not isinstance(entries, list):
        return ""
    lines = []
    for entry in entries[-PROMPT_HISTORY:]:
        if not isinstance(entry, dict) or not isinstance(entry.get("instruction"), str):
            continue
        what = " ".join(entry["instruction"].split())[:200]
        if entry.get("planOnly"):
            outcome = "planned only"
        elif entry.get("success"):
            outcome = "done; files: " + (", ".join(entry.get("files") or []) or "none")
        else:
            outcome = "failed"
        lines.append(f"- {what} ({outcome})")
    return "\n".join(lines)


def _changes(before: dict, after: dict) -> list[dict]:
    changes = []
    for path in sorted(set(before) | set(after)):
        if before.get(path) == after.get(path):
            continue
        if path not in after:
            action = "reverted"
        elif after[path][1] is None or after[path][0] == "deleted":
            action = "deleted"
        elif after[path][0] in ("untracked", "added"):
            action = "added"
        else:
            action = "modified"
        changes.append({"file": path, "action": action})
    return changes


RUNNER = web.AppKey("control_claude_runner", Runner)
