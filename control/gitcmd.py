"""Running the service's own git: argument lists, a fixed environment, no secrets on disk.

Every command gets the same protective configuration on its command line
(``-c``, which git also hands to the git processes it starts itself):

* ``core.hooksPath=/dev/null`` and ``core.fsmonitor=false``: the AI agent can
  write files in the repository, so nothing it writes may run as our git.
* ``safe.directory=*``: EFS files belong to another uid; no chown, ever.
* ``credential.helper=`` (which empties the list from any config file), then,
  only when GITHUB_TOKEN is set, an inline helper that prints the token from
  the *child's environment* (``GIT_EDGE_TOKEN``) and only for hosts in
  GIT_ALLOWED_HOSTS. The token is never in an argument, a URL or a file.

The environment is the settings' child allowlist plus ``GIT_ALLOW_PROTOCOL``
(https, and file with GIT_ALLOW_LOCAL=1), ``GIT_TERMINAL_PROMPT=0`` and an
empty ``GIT_ASKPASS`` (so no ``core.askPass`` from a repository runs either).
Output that reaches logs or clients goes through :meth:`GitRunner.scrub`.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import anyio
from git.cmd import Git
from git.exc import UnsafeOptionError, UnsafeProtocolError
from git.remote import Remote
from git.repo.base import Repo

from control.settings import ControlSettings
from core import processes

log = logging.getLogger(__name__)

TOKEN_USERNAME = "x-access-token"
MAX_STDERR = 64 * 1024

# Runs in /bin/sh as ``<helper> get|store|erase``; answers only ``get``, only for
# an allowed host (git passes ``host=name[:port]`` on stdin).
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; host=; '
    'while IFS= read -r line; do case "$line" in host=*) host="${line#host=}";; esac; done; '
    'host="${host%:*}"; '
    'case ",$GIT_EDGE_TOKEN_HOSTS," in *",$host,"*) '
    f"printf 'username=%s\\npassword=%s\\n' '{TOKEN_USERNAME}' \"$GIT_EDGE_TOKEN\";; esac; }}; f"
)

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_PROGRESS_SPLIT = re.compile(r"[\r\n]+")

# GitPython's lists of options that run commands, checked on every network command.
_UNSAFE_OPTIONS = {
    "clone": Repo.unsafe_git_clone_options,
    "fetch": Remote.unsafe_git_fetch_options,
    "pull": Remote.unsafe_git_pull_options,
    "push": Remote.unsafe_git_push_options,
    "ls-remote": Remote.unsafe_git_fetch_options,
}

Progress = Callable[[str], None]
PIPE_LINGER = 5.0  # seconds to wait for git's pipes to close once it has exited


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: str
    stderr: str  # already scrubbed


class GitError(Exception):
    """A git command that failed; ``stderr`` and ``stdout`` are already scrubbed of credentials."""

    def __init__(self, command: str, returncode: int, stderr: str, stdout: str = "") -> None:
        self.command = command
        self.returncode = returncode
        self.stderr = stderr
        self.stdout = stdout
        super().__init__(f"git {command} failed ({returncode}): {self.summary}")

    @property
    def summary(self) -> str:
        """The last meaningful lines of git's message, for an API answer."""
        lines = [ln.strip() for ln in _PROGRESS_SPLIT.split(self.stderr) if ln.strip()]
        lines += [ln.strip() for ln in self.stdout.splitlines() if "rejected" in ln]  # push --porcelain
        lines = [ln for ln in lines if not ln.startswith(("hint:", "remote: Counting", "remote: Compressing"))]
        return " | ".join(lines[-4:]) or f"exit status {self.returncode}"

    @property
    def kind(self) -> str:
        """auth, not_found, rejected, network or other: how the API answers it."""
        text = self.stderr + "\n" + self.stdout
        if re.search(
            r"Authentication failed|could not read (Username|Password)|terminal prompts disabled"
            r"|returned error: 40[13]|Invalid username or password",
            text,
        ):
            return "auth"
        if re.search(r"\[rejected\]|non-fast-forward|\(fetch first\)|stale info|Updates were rejected", text):
            return "rejected"
        if re.search(r"[Rr]epository not found|does not appear to be a git repository|returned error: 404", text):
            return "not_found"
        if re.search(r"Could not resolve host|Failed to connect|Connection refused|timed out|SSL|TLS|gnutls", text):
            return "network"
        return "other"


class GitRunner:
    """Runs ``git`` for the control API with the protective config and environment."""

    def __init__(self, settings: ControlSettings) -> None:
        self._token = settings.github_token
        protocols = ["https"] + (["file"] if settings.git_allow_local else [])
        env = dict(settings.child_env)
        env.setdefault("PATH", os.defpath)
        env.update(
            GIT_ALLOW_PROTOCOL=":".join(protocols),
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="",
            GIT_EDITOR="true",
            GIT_PAGER="cat",
            LC_ALL="C",
        )
        config = [
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "safe.directory=*",
            "credential.helper=",
            "commit.gpgSign=false",
            "gc.autoDetach=false",
            "http.lowSpeedLimit=1",
            "http.lowSpeedTime=300",
            f"user.name={settings.git_user_name}",
            f"user.email={settings.git_user_email}",
        ]
        if self._token:
            env["GIT_EDGE_TOKEN"] = self._token
            env["GIT_EDGE_TOKEN_HOSTS"] = ",".join(h.lower() for h in settings.git_allowed_hosts)
            config.append(f"credential.helper={CREDENTIAL_HELPER}")
        if settings.git_ssl_ca_info is not None:
            config.append(f"http.sslCAInfo={settings.git_ssl_ca_info}")
        self._env = env
        self._prefix = [arg for item in config for arg in ("-c", item)]
        secrets = [self._token] if self._token else []
        if self._token:
            basic = f"{TOKEN_USERNAME}:{self._token}".encode()
            secrets += [base64.b64encode(basic).decode(), base64.b64encode(basic).decode().rstrip("=")]
        self._secrets = [s for s in secrets if s]
        # Told of every git command's outcome (the edge's metrics: edge.metrics.observe_git).
        self.observer: Callable[[str, bool], None] | None = None

    def scrub(self, text: str) -> str:
        """``text`` without the token (in any form git might print) or URL userinfo."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _USERINFO.sub(r"\g<scheme>***@", text)

    def argv(self, args: Sequence[str]) -> list[str]:
        """The full command line (no secrets in it: the token is only in the environment)."""
        return ["git", *self._prefix, *args]

    async def run(
        self,
        args: Sequence[str],
        cwd: Path,
        *,
        input: str | None = None,
        check: bool = True,
        progress: Progress | None = None,
    ) -> GitResult:
        """Run ``git args`` in ``cwd``; GitError when it fails and ``check`` is set.

        ``progress`` receives each progress line git writes to stderr (scrubbed).
        A cancelled caller kills the process; the workspace recovers on the next call.
        """
        args = list(args)
        unsafe = _UNSAFE_OPTIONS.get(args[0]) if args else None
        if unsafe is not None:
            try:
                Git.check_unsafe_options(options=args[1:], unsafe_options=unsafe)
                for arg in args[1:]:
                    Git.check_unsafe_protocols(arg)
            except (UnsafeOptionError, UnsafeProtocolError) as exc:
                raise GitError(args[0], -1, str(exc)) from None
        log.debug("git %s (in %s)", " ".join(args[:6]), cwd)
        child = await processes.start(
            self.argv(args),
            cwd=cwd,
            env=self._env,
            stdin=processes.PIPE if input is not None else processes.DEVNULL,
        )
        stdout, stderr = bytearray(), bytearray()
        try:
            async with anyio.create_task_group() as group:
                if input is not None:
                    group.start_soon(child.send_input, input.encode())
                assert child.stdout is not None and child.stderr is not None
                group.start_soon(self._read_stdout, child.chunks(child.stdout), stdout)
                group.start_soon(self._read_stderr, child.lines(child.stderr, ends=b"\r\n"), stderr, progress)
                # git may exit while a child of it (git-remote-https, ...) still holds the pipes: killed after PIPE_LINGER.
                returncode = await child.finish(linger=PIPE_LINGER)
        except BaseException:
            await child.stop(grace=0)  # git and the helpers it started
            raise
        result = GitResult(returncode, stdout.decode("utf-8", "replace"), self.scrub(stderr.decode("utf-8", "replace")))
        if self.observer is not None:
            self.observer(args[0], not (check and returncode != 0))
        if check and returncode != 0:
            error = GitError(args[0], returncode, result.stderr, self.scrub(result.stdout))
            log.warning("git %s failed (%d): %s", args[0], returncode, error.summary)
            raise error
        return result

    @staticmethod
    async def _read_stdout(chunks: AsyncIterator[bytes], into: bytearray) -> None:
        async for chunk in chunks:
            into += chunk

    async def _read_stderr(self, lines: AsyncIterator[bytes], into: bytearray, progress: Progress | None) -> None:
        """Keep the last MAX_STDERR bytes; hand each progress line (git ends them with CR or LF) to ``progress``."""
        async for line in lines:
            into += line
            if len(into) > MAX_STDERR:
                del into[: len(into) - MAX_STDERR]
            if progress is not None and line.strip():
                progress(self.scrub(line.decode("utf-8", "replace").strip()))
