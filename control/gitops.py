"""Git operations on a thread's worktree: status, commit, push, pull, fetch, branch.

Each operation that changes the worktree holds the thread's lock; those that
touch the shared clone or the network also take the user's lock (after the
thread lock). Nothing here loses work: a conflicting pull is aborted and the
worktree is left as it was, a push that would overwrite remote commits is
refused unless forced (and then only with ``--force-with-lease``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from control.errors import git_failure
from control.gitcmd import GitError
from control.repourl import pull_request_url
from control.workspaces import Workspaces
from core.errors import Conflict, DomainError, Forbidden, NotFound
from core.ids import ThreadRef, check_branch
from core.jsonfile import read_json_file, write_json_atomic

CHANGE_KINDS = ("modified", "added", "deleted", "untracked", "conflicted")


@dataclass(frozen=True)
class GitStatus:
    """A worktree's branch, cleanliness, ahead/behind and changes by kind."""

    branch: str | None
    head: str | None
    clean: bool
    ahead: int
    behind: int
    upstream: str | None  # the configured upstream (set by the first push)
    compared_to: str | None  # what ahead/behind count against: the upstream, else origin/<branch or default>
    changes: dict[str, list[str]]
    protected: bool

    @property
    def can_push(self) -> bool:
        return self.branch is not None and not self.protected and self.ahead > 0

    def as_json(self) -> dict:
        """The API's shape (keys in the order clients have always seen)."""
        return {
            "branch": self.branch,
            "head": self.head,
            "clean": self.clean,
            "ahead": self.ahead,
            "behind": self.behind,
            "upstream": self.upstream,
            "comparedTo": self.compared_to,
            "changes": self.changes,
            "protected": self.protected,
            "canPush": self.can_push,
        }


@dataclass(frozen=True)
class PushResult:
    """A push of the thread's branch to origin."""

    branch: str
    forced: bool
    up_to_date: bool
    pull_request_url: str | None

    def as_json(self) -> dict:
        return {
            "pushed": True,
            "branch": self.branch,
            "remote": "origin",
            "forced": self.forced,
            "upToDate": self.up_to_date,
            "pullRequestUrl": self.pull_request_url,
        }


@dataclass(frozen=True)
class CommitResult:
    """A commit (or nothing to commit), with the push GIT_AUTO_PUSH made or the reason it failed.

    ``error``: the commit itself failed (a run's auto-commit reports that instead of failing the run).
    """

    committed: bool
    commit: str | None
    branch: str | None
    message: str
    files: list[str] = field(default_factory=list)
    push: PushResult | None = None
    push_error: str | None = None
    error: str | None = None

    def as_json(self) -> dict:
        if self.error is not None:
            return {"committed": False, "commitError": self.error}
        if not self.committed:
            return {"committed": False, "message": self.message, "branch": self.branch, "commit": self.commit}
        data = {
            "committed": True,
            "commit": self.commit,
            "branch": self.branch,
            "filesChanged": len(self.files),
            "files": list(self.files),
            "message": self.message,
        }
        if self.push is not None:
            data.update(self.push.as_json())
        elif self.push_error is not None:
            data.update(pushed=False, pushError=self.push_error)
        return data


@dataclass(frozen=True)
class PullResult:
    """A merge of ``origin/<source>``; ``missing`` says why nothing was fetched (no such remote branch yet)."""

    updated: bool
    branch: str | None
    head: str | None
    fast_forward: bool = False
    source: str = ""
    previous_head: str | None = None
    missing: str | None = None

    def as_json(self) -> dict:
        if self.missing is not None:
            return {"updated": self.updated, "branch": self.branch, "head": self.head, "message": self.missing}
        return {
            "updated": self.updated,
            "fastForward": self.fast_forward,
            "branch": self.branch,
            "source": self.source,
            "head": self.head,
            "previousHead": self.previous_head,
        }


@dataclass(frozen=True)
class FetchResult:
    """A fetch of the user's clone and the thread's status after it."""

    status: GitStatus

    def as_json(self) -> dict:
        return {"fetched": True, **self.status.as_json()}


@dataclass(frozen=True)
class SwitchResult:
    """The worktree's move to another branch (``switched`` False: it was already there)."""

    switched: bool
    created: bool
    branch: str
    previous_branch: str | None

    def as_json(self) -> dict:
        return {
            "switched": self.switched,
            "created": self.created,
            "branch": self.branch,
            "previousBranch": self.previous_branch,
        }


async def status(ws: Workspaces, key: ThreadRef) -> GitStatus:
    """Branch, cleanliness, ahead/behind and changes by kind (no lock: read-only, no optional locks)."""
    client_id, user_id, _ = key
    worktree = ws.thread_path(key)
    if not (worktree / ".git").is_file():
        raise ws.not_ready(key)
    return await _status(ws, client_id, user_id, worktree)


async def _status(ws: Workspaces, client_id: str, user_id: str, worktree: Path) -> GitStatus:
    result = await ws.git.run(
        ["--no-optional-locks", "status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"], cwd=worktree
    )
    info, changes = parse_status(result.stdout)
    branch = info.get("branch.head")
    branch = None if branch in (None, "(detached)") else branch
    head = info.get("branch.oid")
    upstream = info.get("branch.upstream")
    compared = upstream
    ahead = behind = 0
    if "branch.ab" in info:
        a, b = info["branch.ab"].split()
        ahead, behind = int(a.lstrip("+")), int(b.lstrip("-"))
    elif head and head != "(initial)":
        compare = await _comparison_ref(ws, client_id, user_id, worktree, branch)
        if compare is not None:
            counts = await ws.git.run(["rev-list", "--left-right", "--count", f"HEAD...{compare}"], cwd=worktree)
            ahead, behind = (int(n) for n in counts.stdout.split())
            compared = compare.removeprefix("refs/remotes/")
    clean = not any(changes.values())
    protected = branch in ws.settings.git_protected_branches
    return GitStatus(
        branch=branch,
        head=head if head != "(initial)" else None,
        clean=clean,
        ahead=ahead,
        behind=behind,
        upstream=upstream,
        compared_to=compared,
        changes=changes,
        protected=protected,
    )


async def _comparison_ref(
    ws: Workspaces, client_id: str, user_id: str, worktree: Path, branch: str | None
) -> str | None:
    """origin/<branch> if the remote has it, else origin/<default branch> (what the thread started from)."""
    if branch and await ws.ref_exists(worktree, f"refs/remotes/origin/{branch}"):
        return f"refs/remotes/origin/{branch}"
    metadata = read_json_file(ws.metadata_path(client_id, user_id)) or {}
    default = ws.settings.git_default_branch or metadata.get("defaultBranch")
    if isinstance(default, str) and await ws.ref_exists(worktree, f"refs/remotes/origin/{default}"):
        return f"refs/remotes/origin/{default}"
    return None


def parse_status(output: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``git status --porcelain=v2 --branch -z`` → (branch headers, paths by kind of change)."""
    info: dict[str, str] = {}
    changes: dict[str, list[str]] = {kind: [] for kind in CHANGE_KINDS}
    fields = output.split("\0")
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if not entry:
            continue
        tag = entry[0]
        if tag == "#":
            key, _, value = entry[2:].partition(" ")
            info[key] = value
        elif tag == "?":
            changes["untracked"].append(entry[2:])
        elif tag == "u":
            changes["conflicted"].append(entry.split(" ", 10)[10])
        elif tag == "1":
            xy, path = entry.split(" ", 8)[1], entry.split(" ", 8)[8]
            changes[_kind(xy)].append(path)
        elif tag == "2":
            parts = entry.split(" ", 9)
            original = fields[i]
            i += 1
            changes["added"].append(parts[9])
            if parts[1][0] == "R":
                changes["deleted"].append(original)
    return info, changes


def _kind(xy: str) -> str:
    if xy[0] == "A":
        return "added"
    if "D" in xy:
        return "deleted"
    return "modified"


async def commit(ws: Workspaces, key: ThreadRef, message: str) -> CommitResult:
    """Commit every change in the worktree with a ``Thread-ID`` trailer (then push if GIT_AUTO_PUSH)."""
    client_id, user_id, thread_id = key
    async with ws.thread_lock(key):
        worktree = await ws.open_thread(key)
        try:
            await ws.git.run(["add", "--all"], cwd=worktree)
            staged = await ws.git.run(["diff", "--cached", "--name-only", "--no-ext-diff", "-z"], cwd=worktree)
            files = [name for name in staged.stdout.split("\0") if name]
            branch = await ws.current_branch(worktree)
            if not files:
                head = await _head(ws, worktree)
                return CommitResult(False, head, branch, "nothing to commit, working tree clean")
            # The message goes in on stdin: never a shell, never an option.
            await ws.git.run(
                ["commit", "--quiet", "--no-verify", "--file=-", f"--trailer=Thread-ID: {thread_id}"],
                cwd=worktree,
                input=message,
            )
        except GitError as exc:
            raise git_failure(exc, "commit") from None
        result = CommitResult(True, await _head(ws, worktree), branch, message, files)
        if ws.settings.git_auto_push:
            try:
                result = replace(result, push=await _push(ws, client_id, user_id, worktree, force=False))
            except DomainError as exc:
                result = replace(result, push_error=exc.message)
        return result


async def push(ws: Workspaces, key: ThreadRef, force: bool) -> PushResult:
    """Push the thread's branch (with upstream); protected branches are refused."""
    client_id, user_id, _ = key
    async with ws.thread_lock(key):
        worktree = await ws.open_thread(key)
        return await _push(ws, client_id, user_id, worktree, force=force)


async def _push(ws: Workspaces, client_id: str, user_id: str, worktree: Path, *, force: bool) -> PushResult:
    branch = await ws.current_branch(worktree)
    if branch is None:
        raise Conflict("the worktree is on a detached HEAD; switch to a branch before pushing")
    if branch in ws.settings.git_protected_branches:
        raise Forbidden(
            f"pushing to the protected branch {branch!r} is not allowed", hint="see GIT_PROTECTED_BRANCHES"
        )
    refspec = f"refs/heads/{branch}:refs/heads/{branch}"
    async with ws.user_lock(client_id, user_id):
        ws.clear_shared_locks(client_id, user_id)
        origin = await ws.checked_origin(client_id, user_id)
        args = ["push", "--porcelain", "--set-upstream", *(["--force-with-lease"] if force else []), "origin", refspec]
        try:
            result = await ws.git.run(args, cwd=worktree)
        except GitError as exc:
            if "protected branch" in exc.stderr + exc.stdout:
                raise Forbidden(
                    f"the remote refused {branch!r} (a protected branch)", details=exc.summary
                ) from None
            if exc.kind == "rejected":
                raise Conflict(
                    f"the push of {branch!r} was rejected: the remote branch has commits this thread does not have",
                    hint="pull first (POST /api/git/pull/...), or fetch and push with force: true (--force-with-lease)",
                    details=exc.summary,
                ) from None
            raise git_failure(exc, "push") from None
    flags = [line.split("\t")[0] for line in result.stdout.splitlines() if "\t" in line]
    up_to_date = bool(flags) and all(flag == "=" for flag in flags)
    return PushResult(branch, force, up_to_date, pull_request_url(origin, branch))


async def pull(ws: Workspaces, key: ThreadRef, branch: str | None) -> PullResult:
    """Merge ``origin/<branch>`` (default: the thread's own branch) into the worktree.

    Needs no uncommitted changes to tracked files, so an aborted merge restores
    exactly the state before it; a conflict is aborted and answered with 409.
    """
    client_id, user_id, _ = key
    async with ws.thread_lock(key):
        worktree = await ws.open_thread(key)
        current = await ws.current_branch(worktree)
        source = check_branch(branch) if branch is not None else current
        if source is None:
            raise Conflict("the worktree is on a detached HEAD; name the branch to pull")
        dirty = await ws.git.run(["status", "--porcelain", "-z", "--untracked-files=no"], cwd=worktree)
        if dirty.stdout.strip("\0"):
            raise Conflict(
                "the thread has uncommitted changes; commit them before pulling",
                files=[entry[3:] for entry in dirty.stdout.split("\0") if len(entry) > 3],
            )
        async with ws.user_lock(client_id, user_id):
            ws.clear_shared_locks(client_id, user_id)
            await ws.checked_origin(client_id, user_id)
            fetched = await ws.git.run(
                ["fetch", "origin", f"+refs/heads/{source}:refs/remotes/origin/{source}"], cwd=worktree, check=False
            )
        if fetched.returncode != 0:
            if "couldn't find remote ref" in fetched.stderr:
                if branch is None:
                    head = await _head(ws, worktree)
                    return PullResult(False, current, head, missing=f"origin has no branch {source!r} yet")
                raise NotFound(f"origin has no branch {source!r}")
            raise git_failure(GitError("fetch", fetched.returncode, fetched.stderr), "pull")
        before = await _head(ws, worktree)
        merged = await ws.git.run(["merge", "--no-edit", f"refs/remotes/origin/{source}"], cwd=worktree, check=False)
        if merged.returncode != 0:
            await _undo_merge(ws, worktree, before, merged.stderr + merged.stdout)
        after = await _head(ws, worktree)
        remote_head = (await ws.git.run(["rev-parse", f"refs/remotes/origin/{source}"], cwd=worktree)).stdout.strip()
        return PullResult(
            updated=after != before,
            branch=current,
            head=after,
            fast_forward=after != before and after == remote_head,
            source=f"origin/{source}",
            previous_head=before,
        )


async def _undo_merge(ws: Workspaces, worktree: Path, before: str | None, output: str) -> None:
    """Abort a failed merge, check HEAD is back where it was, and raise the 409."""
    unmerged = await ws.git.run(["diff", "--name-only", "--diff-filter=U", "-z"], cwd=worktree, check=False)
    conflicts = [name for name in unmerged.stdout.split("\0") if name]
    await ws.git.run(["merge", "--abort"], cwd=worktree, check=False)
    if before is not None and await _head(ws, worktree) != before:
        await ws.git.run(["reset", "--keep", before], cwd=worktree)
    if conflicts:
        raise Conflict(
            "the pull conflicts with this thread's changes; the merge was aborted and the worktree is unchanged",
            conflicts=conflicts,
            hint="resolve by editing on the thread (or ask Claude), commit, and pull again",
        )
    files = [line.strip() for line in output.splitlines() if line.startswith("\t")]
    raise Conflict(
        "the pull could not be merged; the worktree is unchanged",
        files=files,
        details=" | ".join(line for line in output.splitlines() if line.strip() and not line.startswith("\t"))[-500:],
    )


async def fetch(ws: Workspaces, key: ThreadRef) -> FetchResult:
    """Update the remote-tracking branches of the user's clone, then report the thread's status."""
    client_id, user_id, _ = key
    worktree = ws.thread_path(key)
    if not (worktree / ".git").is_file():
        raise ws.not_ready(key)
    async with ws.user_lock(client_id, user_id):
        ws.clear_shared_locks(client_id, user_id)
        await ws.checked_origin(client_id, user_id)
        try:
            await ws.git.run(["fetch", "--prune", "origin"], cwd=worktree)
        except GitError as exc:
            raise git_failure(exc, "fetch") from None
    return FetchResult(await _status(ws, client_id, user_id, worktree))


async def switch_branch(
    ws: Workspaces, key: ThreadRef, branch: str, create: bool
) -> SwitchResult:
    """Put the thread's worktree on ``branch`` (new from HEAD with ``create``); changes are kept or git refuses."""
    client_id, user_id, _ = key
    branch = check_branch(branch)
    async with ws.thread_lock(key):
        worktree = await ws.open_thread(key)
        previous = await ws.current_branch(worktree)
        if previous == branch and not create:
            return SwitchResult(False, False, branch, previous)
        exists = await ws.ref_exists(worktree, f"refs/heads/{branch}")
        try:
            async with ws.user_lock(client_id, user_id):
                if create:
                    if exists:
                        raise Conflict(
                            f"the branch {branch!r} already exists", hint="switch to it with createNew: false"
                        )
                    await ws.git.run(["switch", "--no-guess", "-c", branch], cwd=worktree)
                elif exists:
                    await ws.git.run(["switch", "--no-guess", branch], cwd=worktree)
                else:
                    await ws.checked_origin(client_id, user_id)
                    fetched = await ws.git.run(
                        ["fetch", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}"],
                        cwd=worktree,
                        check=False,
                    )
                    if fetched.returncode != 0:
                        if "couldn't find remote ref" in fetched.stderr:
                            raise NotFound(
                                f"no branch {branch!r} here or on origin", hint="use createNew: true to create it"
                            )
                        raise git_failure(GitError("fetch", fetched.returncode, fetched.stderr), "branch")
                    await ws.git.run(
                        ["switch", "--no-guess", "--track", "-c", branch, f"origin/{branch}"], cwd=worktree
                    )
        except GitError as exc:
            if "already" in exc.stderr and ("checked out" in exc.stderr or "used by worktree" in exc.stderr):
                raise Conflict(
                    f"the branch {branch!r} is checked out in another worktree", details=exc.summary
                ) from None
            if "overwritten" in exc.stderr:
                raise Conflict(
                    "switching would overwrite uncommitted changes; commit first", details=exc.summary
                ) from None
            raise git_failure(exc, "branch") from None
        _remember_branch(ws, key, branch)
        return SwitchResult(True, create or not exists, branch, previous)


def _remember_branch(ws: Workspaces, key: ThreadRef, branch: str) -> None:
    ws.registry.update(ws.registry.session_id_of(key), branch=branch)
    path = ws.context_path(key)
    context = read_json_file(path)
    if context is not None:
        context["branch"] = branch
        write_json_atomic(path, context)


async def _head(ws: Workspaces, worktree: Path) -> str | None:
    result = await ws.git.run(["rev-parse", "--verify", "--quiet", "HEAD"], cwd=worktree, check=False)
    return result.stdout.strip() or None
