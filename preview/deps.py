"""A thread's node_modules: installed once per lockfile, shared by hard links.

Threads of one repository usually have the same lockfile, so the first one
runs ``npm ci`` into ``WORKSPACE_PATH/.node_modules/<key>/node_modules`` and
every thread gets a hard-linked copy of that tree (no extra disk). Linking
Astro's 11 000 files takes half a second, so the next thread's copy is
linked ahead of time, in the background, and moved into place by a rename. A copy, not a symlink: Vite only serves files below the project
(``server.fs.allow``) and writes its caches (``node_modules/.vite``,
``node_modules/.astro``) into the project's tree, which must stay per thread.
The user's files are never changed: only ``node_modules`` is added, and the
repository's local ``info/exclude`` (not ``.gitignore``) keeps it out of git.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Callable

import anyio

from preview.logs import LogTail
from preview.node import PreviewError, child_env
from preview.packages import CONFIG_FILES, Tools, detect
from preview.process import run_to_end
from preview.settings import PreviewSettings

log = logging.getLogger(__name__)

STORE_MARK = ".edge-store"  # in a thread's node_modules: the store key it was linked from
SPARE = "spare-"  # in a store: a node_modules tree linked ahead of time for the next thread
INSTALL_TIMEOUT = 900.0
GIT_EXCLUDES = ("/node_modules", "/.astro")


def store_key(folder: Path, node_version: str) -> str | None:
    """Which installed tree fits this thread: the lockfile (or package.json), its package manager and
    configuration, and Node's major version."""
    package = folder / "package.json"
    if not package.is_file():
        return None
    manager = detect(folder)
    lock = folder / manager.lockfile if manager.lockfile else None
    digest = hashlib.sha256()
    digest.update((lock if lock is not None else package).read_bytes())
    if manager.name != "npm":
        digest.update(b"\0manager\0" + manager.label.encode())
    for name in CONFIG_FILES:
        config = folder / name
        if config.is_file():
            digest.update(b"\0" + name.encode() + b"\0" + config.read_bytes())
    digest.update(b"\0node" + node_version.split(".", 1)[0].encode())
    return digest.hexdigest()[:20]


def git_common_dir(folder: Path) -> Path | None:
    """The repository's common git dir for a checkout or worktree root (read from files, no git run)."""
    dotgit = folder / ".git"
    if dotgit.is_dir():
        gitdir = dotgit
    elif dotgit.is_file():
        text = dotgit.read_text(errors="replace").strip()
        if not text.startswith("gitdir:"):
            return None
        gitdir = (folder / text.split(":", 1)[1].strip()).resolve()
    else:
        return None
    common = gitdir / "commondir"
    if common.is_file():
        return (gitdir / common.read_text().strip()).resolve()
    return gitdir


def exclude_from_git(folder: Path, entries: tuple[str, ...] = GIT_EXCLUDES) -> None:
    """Add the preview's generated folders to the repository's local exclude file.

    Worktrees read ``info/exclude`` from the common dir, so one line covers
    every thread; anchored patterns without a trailing slash match a folder
    and a link alike.
    """
    common = git_common_dir(folder)
    if common is None or not common.is_dir():
        return
    exclude = common / "info" / "exclude"
    existing = exclude.read_text().splitlines() if exclude.is_file() else []
    missing = [entry for entry in entries if entry not in existing and entry + "/" not in existing]
    if not missing:
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    prefix = "" if not existing or exclude.read_text().endswith("\n") else "\n"
    with exclude.open("a") as out:
        out.write(prefix + "# added by the webordinary edge (preview dependencies)\n" + "".join(f"{e}\n" for e in missing))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
            raise
        shutil.copy2(src, dst)


def link_tree(source: Path, target: Path, key: str) -> None:
    """Hard-link ``source`` to ``target`` (files shared, folders own), then mark it with ``key``."""
    partial = target.with_name(f"{target.name}.edge-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(source, partial, symlinks=True, copy_function=_link_or_copy)
        (partial / STORE_MARK).write_text(key + "\n")
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _is_spare(path: Path) -> bool:
    return path.name.startswith(SPARE) and "." not in path.name  # not a tree still being linked


def take_spare(store: Path, modules: Path) -> bool:
    """Move a tree linked ahead of time into place (a rename: instant); False when there is none."""
    for spare in store.iterdir():
        if _is_spare(spare):
            try:
                spare.rename(modules)
                return True
            except OSError:  # another start took it first
                continue
    return False


def _store_package_json(folder: Path) -> bytes:
    """package.json without the project's own scripts (its prepare/postinstall need the whole repo)."""
    raw = (folder / "package.json").read_bytes()
    try:
        meta = json.loads(raw)
    except ValueError:
        raise PreviewError("package.json is not valid JSON") from None
    if isinstance(meta, dict):
        meta.pop("scripts", None)
        return json.dumps(meta, indent=2).encode()
    raise PreviewError("package.json is not a JSON object")


class DependencyStore:
    """Installs each distinct lockfile once and links it into threads."""

    def __init__(self, settings: PreviewSettings) -> None:
        self.settings = settings
        self.root = settings.workspace_path / ".node_modules"
        self.npm_cache = settings.npm_cache_dir or settings.workspace_path / ".npm-cache"
        self.tools = Tools(settings, self.npm_cache)
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._refills: dict[str, asyncio.Task] = {}
        self.installs = 0  # npm runs so far (the benchmark and tests read it)

    async def ensure(
        self, folder: Path, node: str, node_version: str, log: LogTail, installing: Callable[[], None]
    ) -> str:
        """Make ``folder/node_modules`` usable; returns ``present``, ``linked`` or ``installed``.

        A node_modules the edge did not create (no mark) is the project's own
        and is used as it is.
        """
        modules = folder / "node_modules"
        key = store_key(folder, node_version)
        if key is None:
            if modules.exists():
                return "present"
            raise PreviewError("package.json is missing: this folder is not an npm project")
        mark = modules / STORE_MARK
        if modules.exists() or modules.is_symlink():
            if not mark.is_file() or mark.read_text().strip() == key:
                return "present"
            log.event("the lockfile changed: relinking node_modules")
            await anyio.to_thread.run_sync(shutil.rmtree, modules)
        store = self.root / key
        outcome = "linked"
        async with self._locks[key]:
            if not (store / "node_modules").is_dir():
                installing()
                await self._install(folder, store, node, log)
                outcome = "installed"
        if await anyio.to_thread.run_sync(take_spare, store, modules):
            log.event(f"node_modules linked ahead of time from the shared install {key}")
        else:
            log.event(f"linking node_modules from the shared install {key}")
            await anyio.to_thread.run_sync(link_tree, store / "node_modules", modules, key)
        exclude_from_git(folder)
        self._refill(store, key)
        return outcome

    async def close(self) -> None:
        """Let a tree being linked ahead of time finish (the edge is stopping; it takes a second at most)."""
        pending = [task for task in self._refills.values() if not task.done()]
        if pending:
            await asyncio.wait(pending)

    def _refill(self, store: Path, key: str) -> None:
        """Link the next thread's tree now, in the background (half a second for Astro's 11 000 files)."""
        running = self._refills.get(key)
        if running is not None and not running.done():
            return
        spare = store / f"{SPARE}{uuid.uuid4().hex[:8]}"

        async def link() -> None:
            if any(_is_spare(path) for path in store.iterdir()):
                return
            try:
                await anyio.to_thread.run_sync(link_tree, store / "node_modules", spare, key)
            except OSError as exc:  # only the next start is slower
                log.warning("could not link a spare node_modules for %s: %s", key, exc)

        self._refills[key] = asyncio.ensure_future(link())

    async def _install(self, folder: Path, store: Path, node: str, log: LogTail) -> None:
        manager = detect(folder)
        partial = store.with_name(f"{store.name}.tmp-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            (partial / "package.json").write_bytes(_store_package_json(folder))
            for name in (manager.lockfile, *CONFIG_FILES):
                if name and (folder / name).is_file():
                    shutil.copyfile(folder / name, partial / name)
            self.npm_cache.mkdir(parents=True, exist_ok=True)
            tool = await self.tools.argv(manager, node, log)
            env = child_env(
                self.settings,
                node,
                network=True,
                extra={
                    "npm_config_cache": str(self.npm_cache),
                    "npm_config_update_notifier": "false",
                    "npm_config_fund": "false",
                    "npm_config_audit": "false",
                    "YARN_CACHE_FOLDER": str(self.npm_cache / "yarn"),
                    "YARN_NODE_LINKER": "node-modules",  # Yarn 2+: a node_modules Astro and Vite can read
                    "YARN_ENABLE_TELEMETRY": "0",
                    "COREPACK_ENABLE_STRICT": "0",
                },
            )
            argv = [*tool, *manager.install_args(self.settings.workspace_path / ".pnpm-store")]
            why = f"from {manager.lockfile}" if manager.lockfile else "without a lock file"
            log.event(f"installing dependencies with {manager.label} {why}: {manager.name} {' '.join(argv[len(tool):len(tool) + 2])}")
            self.installs += 1
            code = await run_to_end(argv, cwd=partial, env=env, log=log, timeout=INSTALL_TIMEOUT)
            if code != 0:
                reason = "timed out" if code is None else f"exited with {code}"
                raise PreviewError(f"{manager.name} {argv[len(tool)]} {reason}; see the log above")
            if not (partial / "node_modules").is_dir():
                (partial / "node_modules").mkdir()
            try:
                partial.rename(store)
            except OSError:
                if not (store / "node_modules").is_dir():
                    raise
        finally:
            if partial.exists():
                await anyio.to_thread.run_sync(shutil.rmtree, partial, True)
