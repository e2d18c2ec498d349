"""The one settings object, read once from the environment.

Each package owns its section: ``control.settings.ControlSettings`` and
``preview.settings.PreviewSettings`` declare their fields; :class:`Settings`
is both sections plus the edge's own fields, read here in one place, and
hands each package its part (``settings.control``, ``settings.preview``).
Every variable read here is listed in the README's table; nothing else in the
code base reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, TypeVar

from control.settings import CLAUDE_EXECUTORS, ControlSettings, default_workspace
from edge.eventloop import LOOPS as EVENT_LOOPS
from preview.settings import PreviewSettings

DEFAULT_PUBLIC_HOSTS = (
    "edit.amelia.webordinary.com",
    "*.edit.amelia.webordinary.com",
    "localhost",
    "*.localhost",
    "127.0.0.1",
    "[::1]",
)


# Variables a child process (Astro dev server, npm) may inherit: locale, home,
# paths and network plumbing (proxy, CA bundle) for npm. Nothing secret.
CHILD_ENV_ALLOWLIST = (
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR",
    "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)


# Variables the Claude executors may need (and only they): Anthropic's key, AWS
# credentials (keys, profile, ECS task role) and Claude Code's documented Bedrock
# settings. Given to the claude-code child only when it uses them.
CLAUDE_ENV_ALLOWLIST = (
    "ANTHROPIC_API_KEY", "ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_BEDROCK_BASE_URL", "CLAUDE_CODE_SKIP_BEDROCK_AUTH", "AWS_EC2_METADATA_DISABLED",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
)


S = TypeVar("S")


class SettingsError(ValueError):
    """A variable has a value the edge cannot use; the message names it."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


def _number(env: Mapping[str, str], name: str, default: float, kind: type = float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise SettingsError(f"{name}={raw!r} must not be negative")
    return value


def _workers(env: Mapping[str, str]) -> int:
    """``EDGE_WORKERS``: a number, or ``auto`` for the CPUs this process may run on (a container's vCPUs)."""
    if (env.get("EDGE_WORKERS") or "").strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    return int(_number(env, "EDGE_WORKERS", 1, int))


def _networks(env: Mapping[str, str], name: str, default: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = env.get(name) or default
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in _split(raw))
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _public_url(raw: str | None) -> str | None:
    """``EDGE_PUBLIC_URL``: an http(s) origin (scheme and host, no path), kept without a trailing slash."""
    if not raw or not raw.strip():
        return None
    value = raw.strip().rstrip("/")
    scheme, sep, rest = value.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or any(c in rest for c in "/?#@ "):
        raise SettingsError(f"EDGE_PUBLIC_URL={raw!r} must be an origin such as https://edit.example.com")
    return value


def _container_id(env: Mapping[str, str]) -> str:
    """ECS's container id (the last segment of the task metadata URI), else HOSTNAME."""
    metadata = (env.get("ECS_CONTAINER_METADATA_URI_V4") or "").rstrip("/")
    return metadata.rsplit("/", 1)[-1] if metadata else env.get("HOSTNAME") or ""


@dataclass(frozen=True)
class Settings(ControlSettings, PreviewSettings):
    """Configuration of one edge process (see the README for each field's variable).

    The control plane's and the previews' fields come from their sections; the
    fields below are the edge's own.
    """

    # The edge server
    host: str = "127.0.0.1"
    port: int = 8080
    public_hosts: tuple[str, ...] = DEFAULT_PUBLIC_HOSTS
    session_host_patterns: tuple[str, ...] = ("{session}--edit.amelia.webordinary.com", "{session}.localhost")
    upstream_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    connect_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 1000
    max_connections_per_client: int = 64  # EDGE_MAX_CONNECTIONS_PER_CLIENT (edge.limits)
    body_timeout: float = 20.0  # EDGE_BODY_TIMEOUT: seconds a request body may send nothing
    fast_path: bool = True  # EDGE_FAST_PATH=0: every request through aiohttp's server and client (edge.fastpath)
    tab_isolation: bool = True  # EDGE_TAB_ISOLATION=0: pages and modules under a prefix pass unrewritten (edge.prefixing)
    preview_host_redirect: bool = False  # EDGE_PREVIEW_HOST_REDIRECT=1: prefix page loads 307 to the session's host (edge.hostredirect)
    workers: int = 1  # EDGE_WORKERS: processes serving the port (edge.workers); more than 1 puts the fast path on more cores
    event_loop: str = "uvloop"  # EDGE_EVENT_LOOP: uvloop (asyncio's when uvloop is missing) or asyncio (edge.eventloop)
    flow_log: Path | None = None
    api_token: str | None = field(default=None, repr=False)
    # EDGE_API_TRUSTED_NETWORKS: callers from these networks (Hermes in the VPC) need no bearer token
    api_trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    allow_no_auth: bool = False
    drain_seconds: float = 10.0
    container: bool = False  # EDGE_CONTAINER=1 (set by the Dockerfile): GITHUB_TOKEN is required

    # Operations
    auto_shutdown_minutes: float = 20.0
    dynamodb_table: str | None = None
    dynamodb_heartbeat_seconds: float = 30.0
    ecs_metadata_uri: str | None = None  # ECS_CONTAINER_METADATA_URI_V4: the task's private IP for DynamoDB items
    container_id: str = ""  # in DynamoDB items: the ECS task's container (metadata URI basename) or HOSTNAME

    @functools.cached_property
    def control(self) -> ControlSettings:
        """The control plane's section (what ``control/`` is given)."""
        return _section(ControlSettings, self)

    @functools.cached_property
    def preview(self) -> PreviewSettings:
        """The preview supervisor's section (what ``preview/`` is given)."""
        return _section(PreviewSettings, self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read the settings once; raise SettingsError naming a bad variable."""
        env = os.environ if env is None else env
        flow_log = env.get("EDGE_FLOW_LOG")
        workspace = env.get("WORKSPACE_PATH")
        settings = cls(
            host=env.get("EDGE_HOST", cls.host) or cls.host,
            port=int(_number(env, "PORT", cls.port, int)),
            public_hosts=_split(env["EDGE_PUBLIC_HOSTS"]) if env.get("EDGE_PUBLIC_HOSTS") else DEFAULT_PUBLIC_HOSTS,
            session_host_patterns=_split(env.get("EDGE_SESSION_HOSTS") or ",".join(cls.session_host_patterns)),
            upstream_networks=_networks(env, "EDGE_UPSTREAM_NETWORKS", "127.0.0.0/8,::1/128"),
            trusted_proxies=_networks(env, "EDGE_TRUSTED_PROXIES", "127.0.0.0/8,::1/128"),
            connect_timeout=_number(env, "EDGE_CONNECT_TIMEOUT", cls.connect_timeout),
            first_byte_timeout=_number(env, "EDGE_FIRST_BYTE_TIMEOUT", cls.first_byte_timeout),
            header_timeout=_number(env, "EDGE_HEADER_TIMEOUT", cls.header_timeout),
            keepalive_timeout=_number(env, "EDGE_KEEPALIVE_TIMEOUT", cls.keepalive_timeout),
            max_connections=int(_number(env, "EDGE_MAX_CONNECTIONS", cls.max_connections, int)),
            max_connections_per_client=int(
                _number(env, "EDGE_MAX_CONNECTIONS_PER_CLIENT", cls.max_connections_per_client, int)
            ),
            body_timeout=_number(env, "EDGE_BODY_TIMEOUT", cls.body_timeout),
            fast_path=_bool(env, "EDGE_FAST_PATH", cls.fast_path),
            tab_isolation=_bool(env, "EDGE_TAB_ISOLATION", cls.tab_isolation),
            preview_host_redirect=_bool(env, "EDGE_PREVIEW_HOST_REDIRECT", cls.preview_host_redirect),
            workers=_workers(env),
            event_loop=(env.get("EDGE_EVENT_LOOP") or cls.event_loop).strip().lower(),
            flow_log=Path(flow_log) if flow_log else None,
            api_token=env.get("EDGE_API_TOKEN") or None,
            api_trusted_networks=_networks(env, "EDGE_API_TRUSTED_NETWORKS", ""),
            allow_no_auth=_bool(env, "EDGE_ALLOW_NO_AUTH", False),
            public_url=_public_url(env.get("EDGE_PUBLIC_URL")),
            session_secret=env.get("EDGE_SESSION_SECRET") or None,
            drain_seconds=_number(env, "EDGE_DRAIN_SECONDS", cls.drain_seconds),
            container=_bool(env, "EDGE_CONTAINER", False),
            workspace_path=Path(workspace) if workspace else default_workspace(),
            github_token=env.get("GITHUB_TOKEN") or None,
            default_client_id=env.get("DEFAULT_CLIENT_ID") or cls.default_client_id,
            default_user_id=env.get("DEFAULT_USER_ID") or cls.default_user_id,
            default_thread_id=env.get("DEFAULT_THREAD_ID") or cls.default_thread_id,
            default_repo_url=env.get("DEFAULT_REPO_URL") or None,
            git_default_branch=env.get("GIT_DEFAULT_BRANCH") or None,
            git_allowed_hosts=_split(env.get("GIT_ALLOWED_HOSTS") or "github.com"),
            git_allow_local=_bool(env, "GIT_ALLOW_LOCAL", False),
            git_protected_branches=_split(env.get("GIT_PROTECTED_BRANCHES") or "main,master,production"),
            git_auto_push=_bool(env, "GIT_AUTO_PUSH", False),
            git_user_name=env.get("GIT_USER_NAME") or cls.git_user_name,
            git_user_email=env.get("GIT_USER_EMAIL") or cls.git_user_email,
            git_ssl_ca_info=Path(env["GIT_SSL_CAINFO"]) if env.get("GIT_SSL_CAINFO") else None,
            astro_port=int(_number(env, "ASTRO_PORT", cls.astro_port, int)),
            node_binary=env.get("NODE_BINARY") or cls.node_binary,
            node_fetch=_bool(env, "NODE_FETCH", cls.node_fetch),
            astro_start_timeout=_number(env, "ASTRO_START_TIMEOUT", cls.astro_start_timeout),
            preview_idle_minutes=_number(env, "PREVIEW_IDLE_MINUTES", cls.preview_idle_minutes),
            max_previews=int(_number(env, "MAX_PREVIEWS", cls.max_previews, int)),
            npm_cache_dir=Path(env["NPM_CACHE_DIR"]) if env.get("NPM_CACHE_DIR") else None,
            child_env=tuple((name, env[name]) for name in CHILD_ENV_ALLOWLIST if env.get(name)),
            auto_shutdown_minutes=_number(env, "AUTO_SHUTDOWN_MINUTES", cls.auto_shutdown_minutes),
            dynamodb_table=env.get("DYNAMODB_TABLE") or None,
            dynamodb_heartbeat_seconds=_number(env, "DYNAMODB_HEARTBEAT_SECONDS", cls.dynamodb_heartbeat_seconds),
            ecs_metadata_uri=env.get("ECS_CONTAINER_METADATA_URI_V4") or None,
            container_id=_container_id(env),
            claude_executor=(env.get("CLAUDE_EXECUTOR") or cls.claude_executor).strip().lower(),
            claude_model=env.get("CLAUDE_MODEL") or None,
            claude_cli=env.get("CLAUDE_CLI") or cls.claude_cli,
            claude_allow_shell=_bool(env, "CLAUDE_ALLOW_SHELL", False),
            claude_max_turns=int(_number(env, "CLAUDE_MAX_TURNS", cls.claude_max_turns, int)),
            claude_use_bedrock=_bool(env, "CLAUDE_CODE_USE_BEDROCK", False),
            claude_max_retries=int(_number(env, "CLAUDE_CODE_MAX_RETRIES", cls.claude_max_retries, int)),
            execution_timeout=_number(env, "EXECUTION_TIMEOUT", cls.execution_timeout),
            bedrock_model_id=env.get("BEDROCK_MODEL_ID") or cls.bedrock_model_id,
            bedrock_endpoint_url=env.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME") or None,
            bedrock_max_attempts=int(_number(env, "BEDROCK_MAX_ATTEMPTS", cls.bedrock_max_attempts, int)),
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            plan_ttl_seconds=_number(env, "PLAN_TTL_SECONDS", cls.plan_ttl_seconds),
            hermes_reply_seconds=_number(env, "HERMES_REPLY_SECONDS", cls.hermes_reply_seconds),
            claude_env=tuple((name, env[name]) for name in CLAUDE_ENV_ALLOWLIST if env.get(name)),
        )
        if not 0 < settings.port < 65536:
            raise SettingsError(f"PORT={settings.port} is not a TCP port")
        if not 1 <= settings.workers <= 64:
            raise SettingsError(f"EDGE_WORKERS={settings.workers} must be between 1 and 64")
        if settings.event_loop not in EVENT_LOOPS:
            raise SettingsError(f"EDGE_EVENT_LOOP={settings.event_loop!r} is not one of {', '.join(EVENT_LOOPS)}")
        if settings.claude_executor not in CLAUDE_EXECUTORS:
            raise SettingsError(f"CLAUDE_EXECUTOR={settings.claude_executor!r} is not one of {', '.join(CLAUDE_EXECUTORS)}")
        for pattern in settings.session_host_patterns:
            if pattern.count("{session}") != 1:
                raise SettingsError(f"EDGE_SESSION_HOSTS: {pattern!r} must contain {{session}} once")
        return settings


def _section(kind: type[S], settings: Settings) -> S:
    """The fields of one section, copied out of the composed settings."""
    return kind(**{f.name: getattr(settings, f.name) for f in fields(kind)})
