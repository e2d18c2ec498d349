"""Fixtures for a real Astro site and its real ``astro dev`` server.

``scripts/setup.sh`` installs Astro 5 and 7 into ``.cache/astro/<major>``;
each test gets its own copy of ``examples/site`` whose ``node_modules`` is
hard-linked from that cache. Without the cache the tests skip, except under
the test command (``scripts/test.sh``) and in CI, where a missing install is a
failure rather than a quiet skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SITE = ROOT / "examples" / "site"
CACHE = ROOT / ".cache"
ASTRO_VERSIONS = ("5", "7")
READY_TIMEOUT = 90.0  # first start optimizes dependencies; the 2-core machine may be busy
STOP_TIMEOUT = 10.0


def require(condition: bool, reason: str) -> None:
    """Skip when something the setup script installs is missing; fail instead under the test
    command (scripts/test.sh sets EDGE_TESTS_STRICT=1, after running the setup) and in CI."""
    if condition:
        return
    if os.environ.get("EDGE_TESTS_STRICT") == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (scripts/setup.sh installs it)", pytrace=False)
    pytest.skip(f"{reason}: run `bash scripts/setup.sh`")


def node_for(version: str) -> str | None:
    """The Node binary for an Astro major: the machine's Node 20 for 5, Node 22 for 7."""
    if version == "5":
        return shutil.which("node")
    node22 = CACHE / "bin" / "node22"
    return str(node22) if node22.exists() else None


@dataclass(frozen=True)
class AstroSite:
    """A private copy of examples/site, ready for ``astro dev``."""

    path: Path
    node: str
    version: str

    @property
    def astro_bin(self) -> Path:
        """Astro's command-line entry point (``astro.js`` in 5, ``bin/astro.mjs`` in 7)."""
        package = self.path / "node_modules" / "astro"
        bin_field = json.loads((package / "package.json").read_text())["bin"]
        entry = bin_field["astro"] if isinstance(bin_field, dict) else bin_field
        return package / entry

    def command(self, *args: str) -> list[str]:
        """An argument list running ``astro <args>`` with this site's Node."""
        return [self.node, str(self.astro_bin), *args]


def _link_node_modules(cache: Path, site: Path) -> None:
    """Give the site its own node_modules whose files are hard links into the cache.

    Not a symlink to the cache: Node and Vite resolve symlinks to the real
    path, which lies outside the project, and Vite's ``server.fs.allow`` then
    refuses ``/@fs/`` URLs such as Astro 5's dev-toolbar entry point (403).
    Hard links keep every path inside the project, as in a real checkout,
    and keep Vite's dependency cache (``node_modules/.vite``) private to this
    copy. ``cp -al`` takes about 0.4 s; across file systems it copies instead.
    """
    target = site / "node_modules"
    try:
        subprocess.run(["cp", "-al", str(cache), str(target)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(cache, target, symlinks=True)
    for private in (".vite", ".astro"):
        shutil.rmtree(target / private, ignore_errors=True)


AstroSiteFactory = Callable[..., AstroSite]


def make_site(parent: Path, version: str, name: str) -> AstroSite:
    """Copy examples/site to ``parent/name`` with the cached Astro ``version`` installed."""
    if version not in ASTRO_VERSIONS:
        raise ValueError(f"Astro version must be one of {ASTRO_VERSIONS}, not {version!r}")
    cache = CACHE / "astro" / version / "node_modules"
    require((cache / "astro" / "package.json").is_file(), f"Astro {version} is not installed in {cache}")
    node = node_for(version)
    require(node is not None, f"no Node binary for Astro {version}")
    assert node is not None
    path = parent / name
    shutil.copytree(EXAMPLE_SITE, path, ignore=shutil.ignore_patterns("node_modules", ".astro", "dist"))
    _link_node_modules(cache, path)
    return AstroSite(path=path, node=node, version=version)


@pytest.fixture
def astro_site(tmp_path: Path) -> AstroSiteFactory:
    """``astro_site(version="5", name="site")``: a fresh copy of examples/site in tmp_path."""

    def make(version: str = "5", name: str = "site") -> AstroSite:
        return make_site(tmp_path, version, name)

    return make


def dev_env() -> dict[str, str]:
    """The environment for ``astro dev``: in the foreground, quiet, no network calls."""
    env = dict(os.environ)
    env.update(ASTRO_DEV_BACKGROUND="0", ASTRO_TELEMETRY_DISABLED="1", ASTRO_DISABLE_UPDATE_CHECK="true", BROWSER="none")
    return env


class DevServer:
    """One ``astro dev`` process, started in its own process group (Vite spawns esbuild)."""

    def __init__(self, site: AstroSite) -> None:
        self.site = site
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.log = site.path.parent / f"{site.path.name}-astro-dev-{self.port}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                site.command("dev", "--host", "127.0.0.1", "--port", str(self.port)),
                cwd=site.path,
                env=dev_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def fail(self, why: str) -> None:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        pytest.fail(f"astro dev (Astro {self.site.version}) at {self.origin} {why}; log:\n{tail}", pytrace=False)

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait until ``GET /`` answers 200 (a page really renders), or fail with the log."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    async with client.get(self.origin + "/") as resp:
                        await resp.read()
                        if resp.status == 200:
                            return
                        last = f"HTTP {resp.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    last = type(exc).__name__
                await asyncio.sleep(0.2)
        code = self.process.poll()
        self.fail(f"exited with {code}" if code is not None else f"was not ready after {timeout:.0f} s ({last})")

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL for anything left."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(STOP_TIMEOUT)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # children that outlived the leader
        except ProcessLookupError:
            pass
        self.process.wait()


AstroDevFactory = Callable[[AstroSite], Awaitable[str]]


@pytest.fixture
async def astro_dev() -> AsyncIterator[AstroDevFactory]:
    """``await astro_dev(site)``: run ``astro dev`` on 127.0.0.1:<free port>; returns its origin.

    The server is this test's own: the test may edit the site's files.
    """
    started: list[DevServer] = []

    async def start(site: AstroSite) -> str:
        server = DevServer(site)
        started.append(server)
        await server.wait_ready()
        return server.origin

    yield start
    await asyncio.gather(*(asyncio.to_thread(server.stop) for server in started))


SharedAstroDev = Callable[[str], Awaitable[tuple[AstroSite, str]]]


@pytest.fixture(scope="session")
def _shared_dev_servers() -> Iterator[dict[str, DevServer]]:
    servers: dict[str, DevServer] = {}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
async def shared_astro_dev(_shared_dev_servers: dict[str, DevServer], tmp_path_factory: pytest.TempPathFactory) -> SharedAstroDev:
    """``await shared_astro_dev("5")`` → ``(site, origin)``: one dev server per version for the whole run.

    Starting ``astro dev`` costs seconds; tests that only read from it share
    one. Such a test must not edit the site's files nor stop the server
    (use ``astro_site`` with ``astro_dev`` for that).
    """

    async def get(version: str = "5") -> tuple[AstroSite, str]:
        server = _shared_dev_servers.get(version)
        if server is None:
            site = make_site(tmp_path_factory.mktemp(f"shared-astro{version}"), version, "site")
            server = _shared_dev_servers[version] = DevServer(site)
        await server.wait_ready()
        return server.site, server.origin

    return get
