"""A Node that fits the site, with nothing to set by hand.

The site's ``engines.node`` and its Astro's own minimum decide. When
``NODE_BINARY`` satisfies them it is used; otherwise a Node that does is taken
from ``WORKSPACE_PATH/.edge/node`` or fetched there from npm's Node packages
(``node-linux-<arch>``: the official binaries, published by the Node.js
project), and the log says so. Of the versions that fit, the lowest even
(long-term support) major wins, at its newest release: the Node closest to
what the site asks for. ``NODE_FETCH=0`` turns fetching off (a Node that does
not fit is then a clear ``failed`` status).
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any

import nodesemver

from core import processes
from preview.logs import LogTail
from preview.node import PreviewError, child_env, node_version, npm_argv, resolve_node
from preview.process import run_to_end

log = logging.getLogger(__name__)
ARCHES = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}
FETCH_TIMEOUT = 600.0


def node_package() -> str:
    """npm's package with this machine's Node binary."""
    arch = ARCHES.get(platform.machine().lower())
    if arch is None:
        raise PreviewError(f"no Node package on npm for this machine ({platform.machine()}); set NODE_BINARY")
    return f"node-linux-{arch}"


def fits(version: str, ranges: list[str]) -> bool:
    """Whether ``version`` satisfies every range (an unreadable range is left to Node and Astro to judge)."""
    for wanted in ranges:
        try:
            if nodesemver.valid_range(wanted, loose=True) is not None and not nodesemver.satisfies(version, wanted, loose=True):
                return False
        except (ValueError, TypeError):
            continue
    return True


def choose(versions: list[str], ranges: list[str]) -> str | None:
    """The newest release of the lowest fitting major, even (LTS) majors first."""
    candidates = [v for v in versions if "-" not in v and fits(v, ranges)]
    if not candidates:
        return None

    def major(version: str) -> int:
        return int(version.split(".", 1)[0])

    majors = sorted({major(v) for v in candidates}, key=lambda m: (m % 2, m))
    best = majors[0]
    return max((v for v in candidates if major(v) == best), key=lambda v: tuple(int(p) for p in v.split(".")))


def site_engines(folder: Path) -> str | None:
    """``engines.node`` of the site's package.json."""
    try:
        meta = json.loads((folder / "package.json").read_text())
    except (OSError, ValueError):
        return None
    engines = meta.get("engines") if isinstance(meta, dict) else None
    wanted = engines.get("node") if isinstance(engines, dict) else None
    return wanted if isinstance(wanted, str) and wanted.strip() else None


class NodeFinder:
    """Finds, and fetches when needed, a Node binary that satisfies a set of ranges."""

    def __init__(self, settings: Any, npm_cache: Path) -> None:  # preview.settings.PreviewSettings
        self.settings = settings
        self.root = settings.workspace_path / ".edge" / "node"
        self.npm_cache = npm_cache
        self._lock = asyncio.Lock()
        self._published: list[str] | None = None

    async def fitting(self, ranges: list[str], log_tail: LogTail | None = None) -> tuple[str, str]:
        """``(node path, version)``: NODE_BINARY when it fits, else a cached or fetched Node that does."""
        configured = resolve_node(self.settings.node_binary)
        version = await node_version(configured)
        if fits(version, ranges) or not self.settings.node_fetch:
            return configured, version
        wanted = " and ".join(ranges)
        async with self._lock:
            cached = self.cached()
            pick = choose(list(cached), ranges)
            if pick is None:
                pick = choose(await self._versions(configured), ranges)
                if pick is None:
                    raise PreviewError(f"no Node.js release satisfies {wanted}")
                if log_tail is not None:
                    log_tail.event(f"Node v{version} ({configured}) does not satisfy {wanted}: fetching Node {pick} from npm ({node_package()})")
                cached[pick] = await self._fetch(configured, pick, log_tail)
        node = str(cached[pick])
        if log_tail is not None:
            log_tail.event(f"using Node {pick} from {self.root} (NODE_BINARY v{version} does not satisfy {wanted})")
        log.info("Node %s for a site that needs %s (NODE_BINARY is v%s)", pick, wanted, version)
        return node, await node_version(node)

    def cached(self) -> dict[str, Path]:
        """Version → binary of every Node fetched before."""
        found: dict[str, Path] = {}
        if self.root.is_dir():
            for folder in self.root.iterdir():
                binary = folder / "node_modules" / node_package() / "bin" / "node"
                if folder.name.startswith("v") and binary.is_file():
                    found[folder.name[1:]] = binary
        return found

    async def _versions(self, node: str) -> list[str]:
        """Every version npm has of this machine's Node package (asked once per edge)."""
        if self._published is None:
            env = child_env(self.settings, node, network=True, extra={"npm_config_cache": str(self.npm_cache)})
            argv = [*npm_argv(node), "view", node_package(), "versions", "--json"]
            result = await processes.run(argv, env=env, timeout=120)
            try:
                published = json.loads(result.stdout)
            except ValueError:
                published = None
            if result.returncode != 0 or not isinstance(published, list):
                raise PreviewError(f"could not ask the npm registry for {node_package()}'s versions")
            self._published = [str(v) for v in published]
        return self._published

    async def _fetch(self, node: str, version: str, log_tail: LogTail | None) -> Path:
        target = self.root / f"v{version}"
        partial = self.root / f".v{version}-{uuid.uuid4().hex[:8]}"
        partial.mkdir(parents=True)
        try:
            env = child_env(self.settings, node, network=True, extra={"npm_config_cache": str(self.npm_cache)})
            argv = [*npm_argv(node), "install", "--prefix", str(partial), f"{node_package()}@{version}", "--no-audit", "--no-fund", "--no-save"]
            sink = log_tail if log_tail is not None else LogTail(self.root / "fetch.log")
            code = await run_to_end(argv, cwd=partial, env=env, log=sink, timeout=FETCH_TIMEOUT)
            binary = partial / "node_modules" / node_package() / "bin" / "node"
            if code != 0 or not binary.is_file():
                raise PreviewError(f"could not fetch Node {version} from npm ({node_package()}); see the log")
            partial.rename(target)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return target / "node_modules" / node_package() / "bin" / "node"
