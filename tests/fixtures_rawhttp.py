"""Raw HTTP/1.x over TCP, for tests that send what no client library would,
and an upstream that records every request that reaches it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from edge import keys
from edge.routing import Route


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader: asyncio.StreamReader, timeout: float = 10.0) -> RawResponse | None:
    """The next response on the connection, or None when it ended (or was reset) before a status line."""
    async with asyncio.timeout(timeout):
        try:
            line = await reader.readline()
        except ConnectionResetError:
            return None
        if not line:
            return None
        status = int(line.split(b" ", 2)[1])
        headers: CIMultiDict[str] = CIMultiDict()
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers.add(name.strip(), value.strip())
        if "Content-Length" in headers:
            body = await reader.readexactly(int(headers["Content-Length"]))
        elif headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readline()
        elif status in (101, 204, 304):
            body = b""
        else:
            body = await reader.read()
        return RawResponse(status, headers, body)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    """Wait (bounded) until the other side closes the connection; return what it sent until then."""
    received = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def request(method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"", version: str = "1.1") -> bytes:
    """A well-formed request with Host: localhost (add Content-Length yourself when there is a body)."""
    lines = [f"{method} {path} HTTP/{version}", "Host: localhost"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Seen:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class RecordingUpstream:
    """An upstream that answers every request with ``<method> <path> <body length>`` and records it."""

    origin: str = ""
    arrived: list[str] = field(default_factory=list)  # paths whose head arrived
    seen: list[Seen] = field(default_factory=list)  # complete requests, body included
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append(request.path_qs)
        self.changed.set()
        body = await request.read()
        self.seen.append(Seen(request.method, request.path_qs, CIMultiDict(request.headers), body))
        self.changed.set()
        return web.Response(text=f"{request.method} {request.path_qs} {len(body)}")

    async def wait_for(self, path: str, *, head_only: bool = False, timeout: float = 10.0) -> None:
        """Until a request for ``path`` has been received whole (or, with ``head_only``, has begun)."""
        async with asyncio.timeout(timeout):
            while path not in (self.arrived if head_only else [s.path for s in self.seen]):
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def recording_upstream(serve) -> RecordingUpstream:
    upstream = RecordingUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    upstream.origin = (await serve(app)).origin
    return upstream


def add_route(edge_server, session_id: str, origin: str) -> None:
    """Point a session of a running edge at an upstream (as the routes API would)."""
    edge_server.app[keys.SESSIONS].set(Route(session_id, URL(origin)))
