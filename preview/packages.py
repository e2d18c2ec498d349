"""Run a site the way its owner does: its lock file's package manager, its own ``dev`` script.

``package-lock.json`` → ``npm ci``; ``pnpm-lock.yaml`` → ``pnpm install
--frozen-lockfile``; ``yarn.lock`` → ``yarn install`` (frozen). The version is
the one ``packageManager`` in package.json names, else pnpm 10 or yarn 1.

pnpm and yarn are installed with npm from the npm registry into
``WORKSPACE_PATH/.edge/tools/<name>-<version>`` once, rather than through
corepack: corepack verifies each download against signing keys bundled with
it, which fails for releases signed after that corepack was built, and Node 25
no longer ships it.

A dev script that is exactly ``astro dev`` is run as Astro itself (the same
command, without a package manager in between); any other ``dev`` script is
run through the package manager with ``--host 127.0.0.1 --port <port>``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preview.logs import LogTail
from preview.node import PreviewError, child_env, npm_argv
from preview.process import run_to_end

LOCKFILES = (("package-lock.json", "npm"), ("pnpm-lock.yaml", "pnpm"), ("yarn.lock", "yarn"))
DEFAULT_VERSIONS = {"pnpm": "10", "yarn": "1.22.22"}  # pnpm 11 needs Node >= 22
# Configuration files an install reads besides package.json and the lock file.
CONFIG_FILES = (".npmrc", "pnpm-workspace.yaml", ".yarnrc", ".yarnrc.yml")
TOOL_INSTALL_TIMEOUT = 300.0


@dataclass(frozen=True)
class PackageManager:
    """Which package manager a site uses, and how it was decided."""

    name: str  # npm, pnpm or yarn
    version: str | None  # None: the npm that comes with Node
    lockfile: str | None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    @property
    def package(self) -> str | None:
        """The npm package that provides this manager (None for npm itself)."""
        if self.name == "pnpm":
            return "pnpm"
        if self.name == "yarn":
            return "yarn" if self.version is None or self.version.startswith("1") else "@yarnpkg/cli-dist"
        return None

    def install_args(self, store_dir: Path) -> list[str]:
        """The install command, frozen to the lock file when there is one."""
        if self.name == "pnpm":
            frozen = ["--frozen-lockfile"] if self.lockfile else []
            return ["install", *frozen, "--store-dir", str(store_dir), "--reporter=append-only"]
        if self.name == "yarn":
            if self.version is None or self.version.startswith("1"):
                frozen = ["--frozen-lockfile"] if self.lockfile else []
                return ["install", *frozen, "--non-interactive", "--no-progress"]
            return ["install", *(["--immutable"] if self.lockfile else [])]
        return ["ci" if self.lockfile else "install", "--no-audit", "--no-fund", "--no-progress"]

    def run_args(self, script: str, *args: str) -> list[str]:
        """``run <script>`` with arguments for the script (npm needs ``--`` before them)."""
        return ["run", script, *(["--"] if self.name == "npm" else []), *args]


def read_package_json(folder: Path) -> dict:
    try:
        meta = json.loads((folder / "package.json").read_text())
    except FileNotFoundError:
        raise PreviewError("package.json is missing: this folder is not an npm project") from None
    except ValueError:
        raise PreviewError("package.json is not valid JSON") from None
    if not isinstance(meta, dict):
        raise PreviewError("package.json is not a JSON object")
    return meta


def detect(folder: Path) -> PackageManager:
    """The site's package manager: its lock file, else ``packageManager``, else npm."""
    try:
        meta = read_package_json(folder)
    except PreviewError:
        meta = {}
    named, _, version = str(meta.get("packageManager") or "").partition("@")
    version = version.split("+", 1)[0] or None  # "pnpm@10.34.9+sha512.…"
    for lockfile, name in LOCKFILES:
        if (folder / lockfile).is_file():
            return _manager(name, version if named == name else None, lockfile)
    if named in ("pnpm", "yarn"):
        return _manager(named, version, None)
    return PackageManager("npm", None, None)


def _manager(name: str, version: str | None, lockfile: str | None) -> PackageManager:
    if name == "npm":
        return PackageManager("npm", None, lockfile)
    return PackageManager(name, version or DEFAULT_VERSIONS[name], lockfile)


def dev_script(folder: Path) -> str | None:
    """The site's own ``dev`` script, or None."""
    try:
        scripts = read_package_json(folder).get("scripts")
    except PreviewError:
        return None
    script = scripts.get("dev") if isinstance(scripts, dict) else None
    return script.strip() if isinstance(script, str) and script.strip() else None


def is_plain_astro_dev(script: str | None) -> bool:
    return script is not None and script.split() == ["astro", "dev"]


class Tools:
    """pnpm and yarn, installed with npm once per version into ``WORKSPACE_PATH/.edge/tools``."""

    def __init__(self, settings: Any, npm_cache: Path) -> None:  # preview.settings.PreviewSettings
        self.settings = settings
        self.root = settings.workspace_path / ".edge" / "tools"
        self.npm_cache = npm_cache
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def argv(self, manager: PackageManager, node: str, log: LogTail) -> list[str]:
        """How to run ``manager`` with ``node``; installs it first when needed."""
        if manager.package is None:
            return npm_argv(node)
        folder = self.root / f"{manager.name}-{manager.version}"
        entry = folder / "node_modules" / manager.package / "bin" / ("pnpm.cjs" if manager.name == "pnpm" else "yarn.js")
        async with self._locks[folder.name]:
            if not entry.is_file():
                await self._install(manager, folder, node, log)
        if not entry.is_file():
            raise PreviewError(f"{manager.label} was installed but {entry.name} is missing")
        return [node, str(entry)]

    async def _install(self, manager: PackageManager, folder: Path, node: str, log: LogTail) -> None:
        partial = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            spec = f"{manager.package}@{manager.version}"
            log.event(f"fetching {manager.label} from the npm registry (once; kept in .edge/tools)")
            env = child_env(self.settings, node, network=True, extra={"npm_config_cache": str(self.npm_cache)})
            argv = [*npm_argv(node), "install", "--prefix", str(partial), spec, "--no-audit", "--no-fund", "--no-save"]
            code = await run_to_end(argv, cwd=partial, env=env, log=log, timeout=TOOL_INSTALL_TIMEOUT)
            if code != 0:
                raise PreviewError(f"could not install {manager.label} with npm; see the log above")
            try:
                partial.rename(folder)
            except OSError:
                if not folder.is_dir():
                    raise
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
