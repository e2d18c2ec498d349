"""Node and the project's own Astro: which binary, which version, which environment."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nodesemver

from core import processes
from preview.settings import PreviewSettings

FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"
NETWORK_VARS = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
)
# Fixed for every Astro process: no telemetry or update checks, and never detach
# (Astro 7 backgrounds `astro dev` when it thinks an agent runs it).
ASTRO_ENV = {
    "ASTRO_TELEMETRY_DISABLED": "1",
    "ASTRO_DISABLE_UPDATE_CHECK": "true",
    "ASTRO_DEV_BACKGROUND": "0",
    "BROWSER": "none",
}


class PreviewError(RuntimeError):
    """A preview cannot start; the message is shown to the user as is."""


@dataclass(frozen=True)
class AstroInstall:
    """The Astro a project would run (``node_modules/astro``)."""

    version: str
    entry: Path
    engines: str | None
    has_dev_lock: bool  # Astro ≥ 6 keeps .astro/dev.json; `--ignore-lock` skips it

    @property
    def major(self) -> int:
        return int(self.version.split(".", 1)[0])


def resolve_node(binary: str) -> str:
    """The absolute path of NODE_BINARY."""
    found = shutil.which(binary)
    if found is None:
        raise PreviewError(f"NODE_BINARY={binary!r} was not found; set it to a Node.js executable")
    return os.path.abspath(found)


_versions: dict[str, str] = {}


async def node_version(node: str) -> str:
    """``node --version`` without the ``v`` (cached per binary)."""
    if node not in _versions:
        try:
            result = await processes.run([node, "--version"], stderr=processes.STDOUT, timeout=15)
        except (OSError, TimeoutError) as exc:
            raise PreviewError(f"NODE_BINARY ({node}) does not run: {exc}") from None
        text = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0 or not text.startswith("v"):
            raise PreviewError(f"NODE_BINARY ({node}) does not run: {text[:200]}")
        _versions[node] = text[1:]
    return _versions[node]


def astro_install(folder: Path) -> AstroInstall:
    """The project's Astro, or a clear error when it is not installed."""
    package_dir = folder / "node_modules" / "astro"
    try:
        meta = json.loads((package_dir / "package.json").read_text())
    except FileNotFoundError:
        raise PreviewError("Astro is not installed in this project (node_modules/astro is missing); add astro to package.json") from None
    except (OSError, ValueError) as exc:
        raise PreviewError(f"node_modules/astro/package.json is unreadable: {exc}") from None
    bin_field = meta.get("bin")
    relative = bin_field.get("astro") if isinstance(bin_field, dict) else bin_field
    entry = package_dir / (relative or "astro.js")
    if not entry.is_file():
        raise PreviewError(f"Astro's entry point {entry.name} is missing; reinstall the project's dependencies")
    engines = (meta.get("engines") or {}).get("node")
    return AstroInstall(
        version=str(meta.get("version", "0.0.0")),
        entry=entry,
        engines=engines if isinstance(engines, str) else None,
        has_dev_lock=(package_dir / "dist" / "core" / "dev" / "lockfile.js").is_file(),
    )


def check_engines(astro: AstroInstall, node: str, version: str) -> None:
    """Refuse early, with a message that says what to do, when Node is too old for this Astro."""
    if astro.engines is None:
        return
    try:
        ok = nodesemver.satisfies(version, astro.engines, loose=True)
    except (ValueError, TypeError):
        return  # an engines range we cannot read: let Astro decide
    if not ok:
        raise PreviewError(
            f"Astro {astro.version} needs Node {astro.engines}, but NODE_BINARY ({node}) is v{version}. "
            f"Set NODE_BINARY to a Node.js that satisfies {astro.engines}"
            f" (or leave NODE_FETCH on, and the edge fetches one from npm)."
        )


def child_env(settings: PreviewSettings, node: str, *, network: bool = False, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A clean environment: the allowlisted variables, the configured Node first on PATH.

    Tokens and cloud credentials never reach a dev server or npm, because
    nothing outside ``settings.child_env`` is inherited.
    """
    env = {name: value for name, value in settings.child_env if network or name not in NETWORK_VARS}
    env["PATH"] = os.pathsep.join([os.path.dirname(node), env.get("PATH") or FALLBACK_PATH])
    env.setdefault("HOME", str(settings.workspace_path / ".edge" / "home"))
    env.setdefault("LANG", "C.UTF-8")
    env.update(ASTRO_ENV)
    env.update(extra or {})
    return env


def npm_argv(node: str) -> list[str]:
    """npm run by the configured Node (so lifecycle scripts see the same Node as the preview)."""
    npm = shutil.which("npm")
    if npm is None:
        raise PreviewError("npm was not found on PATH; it is needed to install the project's dependencies")
    real = os.path.realpath(npm)
    if real.endswith(".js"):
        return [node, real]
    return [npm]
