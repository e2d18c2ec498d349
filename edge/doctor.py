"""``edge doctor``: check the machine and the configuration before the edge is trusted with users.

Each check says OK, WARN or FAIL and, when not OK, how to fix it. FAIL means
something the edge needs would not work (no Node, an unwritable workspace, an
open API, a malformed token); the command then exits 1. Secrets are never
printed, only whether they are set and what kind they look like.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence, TextIO

import anyio
import nodesemver

from core import processes
from edge import eventloop
from edge.auth import is_loopback
from edge.settings import Settings, SettingsError
from preview.node import AstroInstall, PreviewError, astro_install, node_version, npm_argv, resolve_node
from preview.nodes import NodeFinder, choose, fits, node_package, site_engines

# Kept identical to entrypoint.sh's TOKEN_SHAPE (tests/test_shipping.py checks both agree).
GITHUB_TOKEN_SHAPE = re.compile(r"^(gh[pousr]_[A-Za-z0-9]{30,251}|github_pat_[A-Za-z0-9_]{30,244}|[0-9a-f]{40})$")
TOKEN_KINDS = {
    "ghp_": "classic personal access token",
    "github_pat_": "fine-grained personal access token",
    "gho_": "OAuth token",
    "ghu_": "GitHub App user token",
    "ghs_": "GitHub App installation token",
    "ghr_": "refresh token",
}
MIN_GIT = (2, 22)  # blob-less clones (--filter) and git worktree as the control API uses them
CURRENT_ASTRO_NODE = ">=22.12.0"  # Astro 6/7; Astro 5 also runs on Node 20
COMMAND_TIMEOUT = 15.0
MIN_API_TOKEN_LENGTH = 32

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _run(argv: Sequence[str]) -> tuple[int, str]:
    """Run a version command; (exit status, combined output), (-1, reason) when it cannot run."""
    try:
        done = anyio.run(partial(processes.run, argv, timeout=COMMAND_TIMEOUT))
    except TimeoutError:  # (an OSError too)
        return -1, f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT:g}s"
    except OSError as exc:
        return -1, str(exc)
    return done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace").strip()


def check_git() -> Check:
    git = shutil.which("git")
    if git is None:
        return Check("git", FAIL, "git is not on PATH", "install git (Debian: apt-get install git)")
    code, out = _run([git, "--version"])
    found = re.search(r"(\d+)\.(\d+)", out)
    if code != 0 or found is None:
        return Check("git", FAIL, f"{git} --version failed: {out[:200]}", "reinstall git")
    version = (int(found.group(1)), int(found.group(2)))
    if version < MIN_GIT:
        return Check("git", FAIL, out, f"install git {MIN_GIT[0]}.{MIN_GIT[1]} or newer")
    return Check("git", OK, out)


def check_node(settings: Settings, site: Path | None) -> tuple[list[Check], str | None]:
    """Node itself, and against the site's Astro when ``site`` is given; also returns Node's path."""
    try:
        node = resolve_node(settings.node_binary)
        version = anyio.run(node_version, node)
    except PreviewError as exc:
        return [Check("node", FAIL, str(exc), "install Node.js 22.12+ or set NODE_BINARY to one")], None
    checks = []
    if site is None:
        if nodesemver.satisfies(version, CURRENT_ASTRO_NODE, loose=True):
            checks.append(Check("node", OK, f"{node} v{version}"))
        else:
            checks.append(
                Check("node", WARN, f"{node} v{version}: enough for Astro 5, too old for Astro 6/7 ({CURRENT_ASTRO_NODE})",
                      "set NODE_BINARY to Node 22.12+ (or use --site PATH to check one site)")
            )
        return checks, node
    checks.append(Check("node", OK, f"{node} v{version}"))
    try:
        astro = astro_install(site)
    except PreviewError as exc:
        checks.append(Check("astro", WARN, f"{site}: {exc}", "run `npm ci` in the site, or let the edge install it"))
        astro = None
    if astro is not None:
        checks.append(Check("astro", OK, f"Astro {astro.version} needs Node {astro.engines or 'any'}"))
    checks.append(check_site_node(settings, site, astro, node, version))
    return checks, node


def check_site_node(settings: Settings, site: Path, astro: AstroInstall | None, node: str, version: str) -> Check:
    """Which Node the edge gives this site (preview.nodes): NODE_BINARY, a cached one, or one it will fetch."""
    ranges = [r for r in (site_engines(site), astro.engines if astro else None) if r]
    wanted = " and ".join(ranges) or "any version"
    if fits(version, ranges):
        return Check("site node", OK, f"the site gets NODE_BINARY v{version} (it asks for {wanted})")
    if not settings.node_fetch:
        return Check("site node", FAIL, f"the site asks for Node {wanted}, but NODE_BINARY ({node}) is v{version} and NODE_FETCH=0",
                     f"set NODE_BINARY to a Node.js that satisfies {wanted}, or NODE_FETCH=1")
    finder = NodeFinder(settings.preview, settings.npm_cache_dir or settings.workspace_path / ".npm-cache")
    cached = finder.cached()
    pick = choose(list(cached), ranges)
    if pick is not None:
        return Check("site node", OK, f"the site gets Node {pick} from {cached[pick]} (NODE_BINARY v{version} does not satisfy {wanted})")
    return Check("site node", OK, f"NODE_BINARY v{version} does not satisfy {wanted}: the edge fetches a Node that does "
                 f"from npm ({node_package()}) into {finder.root} on the site's first start")


def check_npm(node: str | None) -> Check:
    try:
        argv = npm_argv(node or "node")
    except PreviewError as exc:
        return Check("npm", FAIL, str(exc), "install npm (it comes with Node.js) and put it on PATH")
    if node is None and argv[0] == "node":
        return Check("npm", FAIL, "npm needs Node.js, which was not found", "fix the node check first")
    code, out = _run([*argv, "--version"])
    if code != 0:
        return Check("npm", FAIL, f"npm --version failed: {out[:200]}", "reinstall npm")
    return Check("npm", OK, f"npm {out.splitlines()[-1] if out else '?'}")


def check_setpriv() -> Check:
    """util-linux's setpriv lets dev servers die with the edge even when it is SIGKILLed."""
    if shutil.which("setpriv", path="/usr/bin:/bin") is None:
        return Check("setpriv", WARN, "setpriv not found: dev servers may outlive a killed edge",
                     "install util-linux (Debian: apt-get install util-linux)")
    return Check("setpriv", OK, "present (dev servers die with the edge)")


def _write_probe(folder: Path) -> str | None:
    """Create and remove a file in ``folder``; the reason when that fails (root's os.access is no proof)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-write-test."):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_workspace(settings: Settings) -> Check:
    path = settings.workspace_path.absolute()
    uid = f"uid {os.getuid()} gid {os.getgid()}"
    if path.exists() and not path.is_dir():
        return Check("workspace", FAIL, f"WORKSPACE_PATH {path} exists but is not a folder", "point WORKSPACE_PATH at a folder")
    if path.is_dir():
        problem = _write_probe(path)
        if problem is not None:
            return Check(
                "workspace", FAIL, f"{path} is not writable by {uid}: {problem}",
                "mount the volume read-write and give it this uid/gid (EFS access point), or chown that folder only",
            )
        return Check("workspace", OK, f"{path} is writable")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    problem = "not a folder" if not parent.is_dir() else _write_probe(parent)
    if problem is not None:
        return Check(
            "workspace", FAIL, f"{path} does not exist and cannot be created ({parent}: {problem})",
            "create WORKSPACE_PATH writable for this user, or mount the volume there",
        )
    return Check("workspace", OK, f"{path} does not exist yet; it can be created in {parent}")


def check_listening(settings: Settings) -> list[Check]:
    """The API token when listening beyond loopback, and hosts a browser could reach."""
    checks = []
    loopback = is_loopback(settings.host)
    if settings.api_token:
        if len(settings.api_token) < MIN_API_TOKEN_LENGTH:
            checks.append(Check("api token", WARN, f"EDGE_API_TOKEN is set but short ({len(settings.api_token)} characters)",
                                f"use at least {MIN_API_TOKEN_LENGTH} random characters (python -c 'import secrets; print(secrets.token_urlsafe(32))')"))
        else:
            checks.append(Check("api token", OK, "EDGE_API_TOKEN is set"))
    elif loopback:
        checks.append(Check("api token", OK, f"not set; the edge listens on loopback ({settings.host}) only"))
    elif settings.allow_no_auth:
        checks.append(Check("api token", WARN, f"not set and EDGE_HOST={settings.host}: EDGE_ALLOW_NO_AUTH=1 opens the API to anyone who reaches it",
                            "set EDGE_API_TOKEN unless something in front authenticates every request"))
    else:
        checks.append(Check("api token", FAIL, f"not set while EDGE_HOST={settings.host}: the edge refuses to start",
                            "set EDGE_API_TOKEN (Hermes sends 'Authorization: Bearer <token>'), or EDGE_HOST=127.0.0.1"))
    hosts = ", ".join(settings.public_hosts)
    public = [h for h in settings.public_hosts if not _is_local_name(h)]
    if not loopback and not public:
        checks.append(Check("public hosts", WARN, f"only local names ({hosts}) while listening on {settings.host}: browsers get 421",
                            "set EDGE_PUBLIC_HOSTS to the names browsers use (e.g. edit.client.example.com,*.edit.client.example.com)"))
    else:
        checks.append(Check("public hosts", OK, hosts))
    return checks


def _is_local_name(host: str) -> bool:
    name = host.lstrip("*.").strip("[]").lower()
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)


def describe_token(token: str) -> str:
    """What kind of GitHub token this looks like, without any of its secret part."""
    kind = next((label for prefix, label in TOKEN_KINDS.items() if token.startswith(prefix)), "classic 40-hex token")
    return f"{kind}, {len(token)} characters"


def check_github_token(settings: Settings) -> Check:
    token = settings.github_token
    if not token:
        if settings.container:
            return Check("GITHUB_TOKEN", FAIL, "not set (the container's entrypoint refuses to start without it)",
                         "pass GITHUB_TOKEN as a secret (ECS: secrets from Secrets Manager or SSM)")
        return Check("GITHUB_TOKEN", WARN, "not set: private https repositories cannot be cloned or pushed",
                     "set GITHUB_TOKEN to a token with contents: read/write on the site's repository")
    if any(ch.isspace() for ch in token):
        return Check("GITHUB_TOKEN", FAIL, f"contains whitespace or a line break ({len(token)} characters)",
                     "store the token alone, without a trailing newline")
    if not GITHUB_TOKEN_SHAPE.fullmatch(token):
        return Check("GITHUB_TOKEN", FAIL, f"does not look like a GitHub token ({len(token)} characters)",
                     "use a ghp_…, github_pat_…, gho_/ghu_/ghs_… token or a 40-hex classic token")
    return Check("GITHUB_TOKEN", OK, f"set ({describe_token(token)})")


def check_executor(settings: Settings) -> Check:
    name = settings.claude_executor
    if name == "simulation":
        return Check("executor", WARN if settings.container else OK, "CLAUDE_EXECUTOR=simulation: edits are simulated, Claude is not called",
                     "set CLAUDE_EXECUTOR=bedrock or claude-code for real edits" if settings.container else "")
    if name == "bedrock":
        if not settings.aws_region:
            return Check("executor", FAIL, "CLAUDE_EXECUTOR=bedrock without AWS_REGION", "set AWS_REGION (the task role needs bedrock:InvokeModel*)")
        return Check("executor", OK, f"bedrock, {settings.bedrock_model_id} in {settings.aws_region}")
    cli = shutil.which(settings.claude_cli)
    if cli is None:
        return Check("executor", FAIL, f"CLAUDE_EXECUTOR=claude-code but CLAUDE_CLI={settings.claude_cli!r} is not found",
                     "install @anthropic-ai/claude-code from npm or set CLAUDE_CLI to its path")
    if settings.claude_use_bedrock and not settings.aws_region:
        return Check("executor", FAIL, "claude-code on Bedrock without AWS_REGION", "set AWS_REGION")
    code, out = _run([cli, "--version"])  # the pinned version the image installs, e.g. "2.1.332 (Claude Code)"
    if code != 0:
        return Check("executor", FAIL, f"{cli} --version failed: {out[:200]}", "reinstall @anthropic-ai/claude-code from npm")
    return Check("executor", OK, f"claude-code {out.splitlines()[0] if out else '?'} ({cli}){' on Bedrock' if settings.claude_use_bedrock else ''}")


def check_aws(settings: Settings) -> list[Check]:
    """What the session writer can actually do with DYNAMODB_TABLE: find items (Query) and update them."""
    table = settings.dynamodb_table
    if not table:
        return []
    if not settings.aws_region:
        return [Check("dynamodb", FAIL, f"DYNAMODB_TABLE={table} without AWS_REGION", "set AWS_REGION")]
    from botocore.exceptions import BotoCoreError, ClientError

    from control.dynamo import client, update_request

    fixes = {
        "AccessDeniedException": "give the task role dynamodb:Query and dynamodb:UpdateItem on the table",
        "ResourceNotFoundException": "create the table (deploy/) or fix DYNAMODB_TABLE",
        "ValidationException": "the table must be keyed by sessionId (HASH) and userId (RANGE), as Hermes' is",
        "UnrecognizedClientException": "check the AWS credentials (the task role)",
    }
    probe = "edge-doctor-probe"
    try:
        dynamo = client(settings.aws_region)
        dynamo.query(TableName=table, KeyConditionExpression="sessionId = :s",
                     ExpressionAttributeValues={":s": {"S": probe}}, Limit=1)
        request = update_request(table, {"sessionId": probe, "userId": probe}, {"status": "expired"})
        dynamo.update_item(**request, ConditionExpression="attribute_exists(sessionId)")  # never true: writes nothing
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ConditionalCheckFailedException":
            return [Check("dynamodb", OK, f"{table} in {settings.aws_region}: Query and UpdateItem allowed, key sessionId+userId")]
        return [Check("dynamodb", FAIL, f"{table}: {code}: {exc.response.get('Error', {}).get('Message', '')}"[:300],
                      fixes.get(code, "check the table and the task role"))]
    except BotoCoreError as exc:
        return [Check("dynamodb", FAIL, f"{table}: {exc}"[:300], "check AWS_REGION, the endpoint and the credentials")]
    return [Check("dynamodb", WARN, f"{table}: the probe's conditional update was not refused", "check the table")]


def check_open_files(settings: Settings) -> Check:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * settings.max_connections
    if soft != resource.RLIM_INFINITY and want and soft < want:
        return Check("open files", WARN, f"limit {soft} < 2 × EDGE_MAX_CONNECTIONS ({want})",
                     f"raise the nofile ulimit to {want} (ECS: ulimits in the task definition) or lower EDGE_MAX_CONNECTIONS")
    return Check("open files", OK, f"limit {'unlimited' if soft == resource.RLIM_INFINITY else soft}")


def check_event_loop(settings: Settings) -> Check:
    """The event loop ``edge serve`` will run on (``EDGE_EVENT_LOOP``; uvloop relays WebSockets faster)."""
    kind, _factory = eventloop.loop_factory(settings.event_loop)
    if kind == settings.event_loop == eventloop.UVLOOP:
        from importlib.metadata import version

        return Check("event loop", OK, f"uvloop {version('uvloop')}")
    if kind == settings.event_loop:
        return Check("event loop", OK, "asyncio (EDGE_EVENT_LOOP=asyncio)")
    return Check("event loop", WARN, "uvloop is not installed: the edge serves on asyncio's slower loop",
                 "install the project's dependencies (pip install .), or set EDGE_EVENT_LOOP=asyncio")


def run_checks(settings: Settings, site: Path | None = None) -> list[Check]:
    checks = [check_git()]
    node_checks, node = check_node(settings, site)
    checks += node_checks
    checks.append(check_npm(node))
    checks.append(check_setpriv())
    checks.append(check_workspace(settings))
    checks += check_listening(settings)
    checks.append(check_github_token(settings))
    checks.append(check_executor(settings))
    checks += check_aws(settings)
    checks.append(check_open_files(settings))
    checks.append(check_event_loop(settings))
    return checks


def report(checks: Iterable[Check], out: TextIO) -> int:
    """Print the checks; 1 when any failed, else 0."""
    checks = list(checks)
    width = max((len(c.name) for c in checks), default=0)
    for check in checks:
        print(f"{check.status:<4}  {check.name:<{width}}  {check.detail}", file=out)
        if check.fix and check.status != OK:
            print(f"      {'':<{width}}  fix: {check.fix}", file=out)
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    print(f"doctor: {failed} failed, {warned} warning(s), {len(checks) - failed - warned} ok", file=out)
    return 1 if failed else 0


def main(site: Path | None, out: TextIO, load: Callable[[], Settings] = Settings.from_env) -> int:
    try:
        settings = load()
    except SettingsError as exc:
        return report([Check("configuration", FAIL, str(exc), "fix that variable")], out)
    return report(run_checks(settings, site), out)
