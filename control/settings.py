"""The control plane's section of the settings: workspaces, git, Hermes' defaults and the Claude executors.

The edge reads every section once from the environment (``edge.settings``, the
README's table names each variable) and gives the control plane this part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CLAUDE_EXECUTORS = ("simulation", "claude-code", "bedrock")


def default_workspace() -> Path:
    """``WORKSPACE_PATH`` when unset: ``workspace/`` in the working directory."""
    return Path.cwd() / "workspace"


@dataclass(frozen=True)
class ControlSettings:
    """What the control API, git and the executors are configured with."""

    # Workspaces and git
    workspace_path: Path = field(default_factory=default_workspace)
    github_token: str | None = field(default=None, repr=False)
    default_client_id: str = "default"
    default_user_id: str = "default"
    default_thread_id: str = "main"  # DEFAULT_THREAD_ID: the thread of an execute that names none (Hermes' first call)
    default_repo_url: str | None = None  # DEFAULT_REPO_URL: cloned when a Hermes session needs a workspace and none exists
    git_default_branch: str | None = None
    git_allowed_hosts: tuple[str, ...] = ("github.com",)
    git_allow_local: bool = False
    git_protected_branches: tuple[str, ...] = ("main", "master", "production")
    git_auto_push: bool = False
    git_user_name: str = "webordinary edge"
    git_user_email: str = "edge@webordinary.com"
    git_ssl_ca_info: Path | None = None
    # The only variables git inherits from the edge's environment (an allowlist: never tokens or cloud credentials).
    child_env: tuple[tuple[str, str], ...] = ()
    session_secret: str | None = field(default=None, repr=False)  # EDGE_SESSION_SECRET: key of derived session ids
    public_url: str | None = None  # EDGE_PUBLIC_URL: origin of every previewUrl the API returns

    # Claude (control.executors)
    claude_executor: str = "simulation"
    claude_model: str | None = None
    claude_cli: str = "claude"
    claude_allow_shell: bool = False
    claude_max_turns: int = 30
    claude_use_bedrock: bool = False  # claude-code talks to Bedrock (CLAUDE_CODE_USE_BEDROCK)
    claude_max_retries: int = 3  # Claude Code's own retries of a failed model call (CLAUDE_CODE_MAX_RETRIES)
    execution_timeout: float = 600.0
    bedrock_model_id: str = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    bedrock_endpoint_url: str | None = None
    bedrock_max_attempts: int = 5
    aws_region: str | None = None
    plan_ttl_seconds: float = 3600.0
    hermes_reply_seconds: float = 270.0  # HERMES_REPLY_SECONDS: answer "inProgress" before Hermes' 300 s timeout
    claude_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
