"""Real git for the workspace tests: bare repositories as remotes, an HTTPS git server, an edge.

* ``git_home``: a temporary HOME for every git the tests and the edge run,
  so the machine's ~/.gitconfig plays no part and can be searched for secrets.
* ``remote``: a bare repository (``main`` and ``develop``) plus a helper that
  commits to it from a clone of its own, as another person would.
* ``git_edge``: a real edge with GIT_ALLOW_LOCAL=1, and a small JSON client.
* ``git_http``: ``git http-backend`` (the real smart-HTTP server) as CGI
  behind an aiohttp server on 127.0.0.1 with TLS (a CA made for the test,
  given to the edge's git as GIT_SSL_CAINFO) that requires the token by
  HTTP Basic auth, like GitHub.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.fixtures_astro import require
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.settings import Settings

TEST_TOKEN = "ghp_TestToken0123456789abcdefEDGEsecret"


def git(args: list[str], cwd: Path, home: Path, input: str | None = None) -> str:
    """Run the *test's* git (not the edge's), with a clean environment; returns stdout."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}
    result = subprocess.run(
        [
            "git",
            "-c",
            "user.name=Other Person",
            "-c",
            "user.email=other@example.com",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


@pytest.fixture
def git_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@dataclass
class Remote:
    """A bare repository and a clone of it that plays "someone else"."""

    bare: Path
    work: Path
    home: Path

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, branch: str, files: dict[str, str], message: str = "remote change") -> str:
        """Commit ``files`` on ``branch`` (created from main if new) and push it; returns the commit."""
        git(["fetch", "-q", "origin"], self.work, self.home)
        exists = git(["ls-remote", "--heads", "origin", branch], self.work, self.home).strip()
        start = f"origin/{branch}" if exists else "origin/main"
        git(["checkout", "-q", "-B", branch, start], self.work, self.home)
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(["add", "--all"], self.work, self.home)
        git(["commit", "-q", "-m", message], self.work, self.home)
        git(["push", "-q", "origin", branch], self.work, self.home)
        return self.head(branch)

    def head(self, branch: str) -> str | None:
        out = git(["for-each-ref", "--format=%(objectname)", f"refs/heads/{branch}"], self.bare, self.home).strip()
        return out or None

    def show(self, branch: str, path: str) -> str:
        return git(["show", f"{branch}:{path}"], self.bare, self.home)

    def message(self, commit: str) -> str:
        return git(["log", "-1", "--format=%B", commit], self.bare, self.home)


def make_remote(root: Path, home: Path, name: str = "site.git") -> Remote:
    bare = root / name
    git(["init", "-q", "--bare", "-b", "main", str(bare)], root, home)
    git(["config", "uploadpack.allowFilter", "true"], bare, home)
    work = root / (name + ".work")
    git(["clone", "-q", str(bare), str(work)], root, home)
    (work / "README.md").write_text("# Site\n")
    (work / "src").mkdir()
    (work / "src" / "index.astro").write_text("<h1>Hello</h1>\n")
    git(["add", "--all"], work, home)
    git(["commit", "-q", "-m", "initial site"], work, home)
    git(["push", "-q", "origin", "main"], work, home)
    git(["checkout", "-q", "-b", "develop"], work, home)
    (work / "DEVELOP.md").write_text("develop only\n")
    git(["add", "--all"], work, home)
    git(["commit", "-q", "-m", "develop work"], work, home)
    git(["push", "-q", "origin", "develop"], work, home)
    git(["checkout", "-q", "main"], work, home)
    return Remote(bare, work, home)


@pytest.fixture
def remote(tmp_path: Path, git_home: Path) -> Remote:
    root = tmp_path / "remotes"
    root.mkdir()
    return make_remote(root, git_home)


def git_settings(settings: Settings, home: Path, **overrides) -> Settings:
    """The edge's settings for git tests: its git sees only the temporary HOME."""
    child_env = (("PATH", os.environ.get("PATH", os.defpath)), ("HOME", str(home)))
    return replace(settings, child_env=child_env, **overrides)


@dataclass
class Answer:
    status: int
    body: dict
    text: str


@dataclass
class GitApi:
    """A JSON client for one edge; remembers every answer (to search them for secrets)."""

    origin: str
    session: aiohttp.ClientSession
    app: web.Application
    answers: list[str] = field(default_factory=list)

    async def call(self, method: str, path: str, body: object = None, data: bytes | str | None = None) -> Answer:
        kwargs: dict = {"data": data} if data is not None else ({"json": body} if body is not None else {})
        async with self.session.request(method, self.origin + path, **kwargs) as resp:
            text = await resp.text()
        self.answers.append(text)
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {}
        return Answer(resp.status, parsed, text)

    async def init(self, c: str = "c1", u: str = "u1", t: str = "t1", repo_url: str | None = None, **extra) -> Answer:
        body = {"clientId": c, "userId": u, "threadId": t, **extra}
        if repo_url is not None:
            body["repoUrl"] = repo_url
        return await self.call("POST", "/api/init", body)

    async def git(self, op: str, c: str = "c1", u: str = "u1", t: str = "t1", body: dict | None = None) -> Answer:
        if op == "status":
            return await self.call("GET", f"/api/git/status/{c}/{u}/{t}")
        return await self.call("POST", f"/api/git/{op}/{c}/{u}/{t}", body if body is not None else {})


@pytest.fixture
async def git_edge(edge, settings: Settings, git_home: Path) -> AsyncIterator[Callable[..., Awaitable[GitApi]]]:
    """Start an edge for git tests (local remotes allowed unless overridden) and a client for it."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides) -> GitApi:
        merged = {"git_allow_local": True, **overrides}
        base = git_settings(settings, git_home)
        server = await edge(**{"child_env": base.child_env, **merged})
        client = aiohttp.ClientSession()
        sessions.append(client)
        return GitApi(server.origin, client, server.app)

    yield start
    for client in sessions:
        await client.close()


# The HTTPS git server -----------------------------------------------------


def make_tls(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA (written to ``ca.pem`` for git) and a server context for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return ca_file, context


def http_backend() -> Path:
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    backend = Path(exec_path) / "git-http-backend"
    require(backend.exists(), "git-http-backend (Debian's git)")
    return backend


@dataclass
class GitHttpServer:
    """Smart-HTTP git behind Basic auth; records what it was asked."""

    root: Path
    home: Path
    token: str
    ca_file: Path
    backend: Path
    remote: Remote | None = None
    port: int = 0
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # (method, path, authorised)
    hold_upload_pack: asyncio.Event | None = None  # set: upload-pack answers only after release
    upload_pack_waiting: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, name: str = "site.git") -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            _, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return password == self.token

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ok = self.authorised(request)
        self.requests.append((request.method, request.path, ok))
        if not ok:
            return web.Response(status=401, text="Unauthorized", headers={"WWW-Authenticate": 'Basic realm="git"'})
        body = await request.read()
        if request.path.endswith("/git-upload-pack") and self.hold_upload_pack is not None:
            self.upload_pack_waiting.set()
            await self.hold_upload_pack.wait()
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": request.remote or "127.0.0.1",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
        }
        proc = await asyncio.create_subprocess_exec(
            str(self.backend), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n") if b"\r\n\r\n" in out else out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        return web.Response(status=status, body=payload, headers=headers)


@pytest.fixture
async def git_http(tmp_path: Path, git_home: Path) -> AsyncIterator[GitHttpServer]:
    """An HTTPS git server on 127.0.0.1 holding ``site.git`` (same content as ``remote``)."""
    root = tmp_path / "served"
    root.mkdir()
    remote = make_remote(root, git_home)
    ca_file, context = make_tls(tmp_path / "tls")
    server = GitHttpServer(root, git_home, TEST_TOKEN, ca_file, http_backend(), remote)
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server
    if server.hold_upload_pack is not None:
        server.hold_upload_pack.set()
    await runner.cleanup()
