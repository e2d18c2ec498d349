"""The preview supervisor's section of the settings: dev servers, Node and npm.

The edge reads every section once from the environment (``edge.settings``, the
README's table names each variable) and gives the supervisor this part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


def default_workspace() -> Path:
    """``WORKSPACE_PATH`` when unset: ``workspace/`` in the working directory."""
    return Path.cwd() / "workspace"


@dataclass(frozen=True)
class PreviewSettings:
    """What the Astro dev servers are started with."""

    workspace_path: Path = field(default_factory=default_workspace)
    astro_port: int = 4321
    node_binary: str = "node"
    node_fetch: bool = True  # NODE_FETCH=0: never fetch a fitting Node from npm (preview.nodes)
    astro_start_timeout: float = 30.0
    preview_idle_minutes: float = 10.0
    max_previews: int = 4
    npm_cache_dir: Path | None = None  # None: WORKSPACE_PATH/.npm-cache
    # The only variables dev servers and npm inherit from the edge's environment
    # (an allowlist: never tokens or cloud credentials).
    child_env: tuple[tuple[str, str], ...] = ()
