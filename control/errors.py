"""How the control plane's own failures become domain errors (``core.errors`` answers them over HTTP)."""

from __future__ import annotations

from control.gitcmd import GitError
from core.errors import Conflict, DomainError, Failed, NotFound, Unauthorized, Unreachable


def git_failure(exc: GitError, action: str) -> DomainError:
    """The API answer for a failed git command (its message is already scrubbed)."""
    kind = exc.kind
    if kind == "auth":
        return Unauthorized(
            f"{action}: the git remote refused the credentials",
            hint="set GITHUB_TOKEN to a token with access to this repository",
            details=exc.summary,
        )
    if kind == "not_found":
        return NotFound(
            f"{action}: repository not found (or the token has no access to it)", details=exc.summary
        )
    if kind == "rejected":
        return Conflict(f"{action}: rejected by the remote", details=exc.summary)
    if kind == "network":
        return Unreachable(f"{action}: could not reach the git remote", details=exc.summary)
    if "unmerged" in exc.stderr.lower() or "conflict" in exc.stderr.lower():
        return Conflict(f"{action}: the worktree has unresolved conflicts", details=exc.summary)
    return Failed(f"{action}: git failed", details=exc.summary)


def _git_command_failure(exc: Exception) -> DomainError:
    assert isinstance(exc, GitError)
    return git_failure(exc, f"git {exc.command}")


# For ``core.errors.error_middleware``: a git command that failed inside a handler.
TRANSLATIONS = {GitError: _git_command_failure}
