"""Which repository URLs the edge clones from, pushes to and sends the token to.

Only https to GIT_ALLOWED_HOSTS (any port). ``git@host:owner/repo`` and
``ssh://`` addresses of an allowed host become https, so the token (not SSH
keys) authenticates. Local paths and ``file://`` only with GIT_ALLOW_LOCAL=1
(tests). Remote helpers (``ext::``, ``fd::``), other transports, options
(anything starting with ``-``) and credentials in the URL are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import quote, urlsplit

from git.cmd import Git
from git.exc import UnsafeProtocolError

from core.errors import Invalid

MAX_URL = 2048
_TRANSPORT_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_LIKE = re.compile(r"^(?:[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/\\:][^:\\]*)$")
_PATH_RE = re.compile(r"/[A-Za-z0-9._~%+/-]+")
_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


class RepoUrlError(Invalid):
    """A repoUrl (or a remote URL found on disk) outside the policy."""


@dataclass(frozen=True)
class RepoUrl:
    """A URL that passed the policy, normalised to what git is given."""

    url: str
    host: str | None  # None for a local repository


def parse_repo_url(raw: object, allowed_hosts: tuple[str, ...], allow_local: bool) -> RepoUrl:
    """Check ``raw`` against the policy; raise RepoUrlError saying why not."""
    if not isinstance(raw, str) or not raw:
        raise RepoUrlError("repoUrl must be a non-empty string")
    if raw.startswith("-"):
        raise RepoUrlError("repoUrl must not start with '-'")
    if _TRANSPORT_HELPER.match(raw):
        raise RepoUrlError("remote-helper transports (such as ext:: and fd::) are not accepted")
    if len(raw) > MAX_URL or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in raw):
        raise RepoUrlError("repoUrl must be a URL without spaces or control characters")
    allowed = {h.lower() for h in allowed_hosts}
    scp = _SCP_LIKE.match(raw) if "://" not in raw else None
    if scp:
        return _checked(_https(scp["host"], None, "/" + scp["path"], allowed))
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme in ("https", "ssh"):
        if parts.query or parts.fragment or "?" in raw or "#" in raw:
            raise RepoUrlError("repoUrl must not have a query or fragment")
        if scheme == "https" and (parts.username is not None or "@" in parts.netloc):
            raise RepoUrlError("repoUrl must not contain credentials; the edge uses GITHUB_TOKEN")
        try:
            port = parts.port if scheme == "https" else None
        except ValueError:
            raise RepoUrlError("repoUrl has an invalid port") from None
        return _checked(_https(parts.hostname or "", port, parts.path, allowed))
    if scheme == "file" or raw.startswith("/"):
        if not allow_local:
            raise RepoUrlError("local repositories are not accepted (GIT_ALLOW_LOCAL is off)")
        path = parts.path if scheme == "file" else raw
        if scheme == "file" and parts.netloc not in ("", "localhost"):
            raise RepoUrlError("file:// URLs must name a local path")
        if not path.startswith("/") or ".." in PurePosixPath(path).parts:
            raise RepoUrlError("a local repoUrl must be an absolute path without '..'")
        return _checked(RepoUrl("file://" + quote(path, safe="/._-~+@"), None))
    raise RepoUrlError("repoUrl must be an https URL (or git@host:owner/repo.git) on an allowed host")


def _https(host: str, port: int | None, path: str, allowed: set[str]) -> RepoUrl:
    host = host.lower()
    if not _HOST_RE.fullmatch(host):
        raise RepoUrlError("repoUrl has an invalid host name")
    if host not in allowed:
        raise RepoUrlError(f"the host {host!r} is not in GIT_ALLOWED_HOSTS")
    if not _PATH_RE.fullmatch(path) or ".." in path.split("/") or path.strip("/") == "":
        raise RepoUrlError("repoUrl must name a repository path such as /owner/repo.git")
    netloc = f"{host}:{port}" if port else host
    return RepoUrl(f"https://{netloc}{path}", host)


def _checked(repo: RepoUrl) -> RepoUrl:
    """GitPython's own guard, kept on as a second opinion."""
    try:
        Git.check_unsafe_protocols(repo.url)
    except UnsafeProtocolError:
        raise RepoUrlError("repoUrl uses a transport that is not accepted") from None
    return repo


def repo_key(url: str) -> str:
    """A comparison key: the same repository spelled with or without ``.git`` or a final ``/``."""
    key = url.strip().rstrip("/")
    if key.endswith(".git"):
        key = key[:-4]
    scheme, sep, rest = key.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}{sep}{host.lower()}{slash}{path}" if sep else key


def pull_request_url(repo_url: str, branch: str) -> str | None:
    """GitHub's "open a pull request" page for ``branch``; None for other remotes."""
    parts = urlsplit(repo_url)
    if parts.scheme != "https" or (parts.hostname or "").lower() != "github.com":
        return None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 2:
        return None
    owner, repo = segments[0], segments[1].removesuffix(".git")
    return f"https://github.com/{owner}/{repo}/pull/new/{quote(branch, safe='/')}"
