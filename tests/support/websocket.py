"""WebSocket peers for relay tests: an echo handler, a recording upstream app, a raw client, a silent server.

:func:`ws_echo` is the tiny upstream: it echoes text messages.

:class:`WsUpstream` is a real aiohttp WebSocket server that records what reaches
it (handshakes, messages, pings, the close frame) and obeys commands sent as
text, so a test can make the upstream act:

- ``!close <code> <reason>``  close with that code
- ``!drop``                   kill the connection without a close frame
- ``!ping <data>``            send a ping (the browser's pong is recorded)
- ``!burst <n>``              send ``n`` numbered text messages
- ``!big <n>``                send ``n`` pattern bytes as one binary message

Every other message is echoed. ``/noproto`` accepts without a subprotocol,
``/status/<code>`` refuses the upgrade with that status, ``/gated`` accepts
only once ``gate`` is set.

:class:`RawClient` speaks WebSocket on a bare TCP stream, so a test sees exactly
which close frame (or none) is on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from tests.support.rawhttp import request
from tests.support.upstreams import Handler, RawServer, pattern_bytes, raw_upstream

PROTOCOLS = ("vite-hmr", "vite-ping")


def pattern(size: int) -> bytes:
    """Deterministic test bytes (not all alike, so a reordering would show)."""
    return b"".join(pattern_bytes(size))


def ws_echo(protocols: tuple[str, ...] = (), prefix: str = "") -> Handler:
    """A WebSocket handler offering ``protocols`` that answers each text message with ``prefix`` + it."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=protocols)
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(prefix + message.data)
        return ws

    return echo


@dataclass
class Handshake:
    raw_path: str
    headers: CIMultiDict[str]
    protocol: str | None


@dataclass
class WsUpstream:
    """A recording, scriptable WebSocket upstream."""

    handshakes: list[Handshake] = field(default_factory=list)
    received: list[tuple[WSMsgType, str | bytes]] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)  # close frames received
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # a socket's handler returned
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    sockets: list[web.WebSocketResponse] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting_at_gate: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/status/{code}", self._refuse)
        app.router.add_get("/noproto", self._accept)
        app.router.add_get("/{tail:.*}", self._accept)
        return app

    async def _refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="Blocked request.")

    async def _accept(self, request: web.Request) -> web.WebSocketResponse:
        if request.path == "/gated":
            self.waiting_at_gate.set()
            await self.gate.wait()
        ws = web.WebSocketResponse(
            protocols=() if request.path == "/noproto" else PROTOCOLS,
            autoping=False,
            max_msg_size=0,
        )
        await ws.prepare(request)
        self.handshakes.append(Handshake(request.raw_path, CIMultiDict(request.headers), ws.ws_protocol))
        self.sockets.append(ws)
        self.connected.set()
        try:
            while True:
                msg = await ws.receive()
                if msg.type is WSMsgType.CLOSE:  # answered by autoclose
                    self.closes.append((msg.data, msg.extra))
                    return ws
                if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return ws
                if msg.type is WSMsgType.PING:
                    self.received.append((msg.type, msg.data))
                    await ws.pong(msg.data)
                elif msg.type is WSMsgType.TEXT and msg.data.startswith("!"):
                    if await self._command(request, ws, msg.data[1:]):
                        return ws
                else:
                    self.received.append((msg.type, msg.data))
                    if msg.type is WSMsgType.TEXT:
                        await ws.send_str(msg.data)
                    elif msg.type is WSMsgType.BINARY:
                        await ws.send_bytes(msg.data)
        finally:
            self.ended.set()

    async def _command(self, request: web.Request, ws: web.WebSocketResponse, command: str) -> bool:
        name, _, arg = command.partition(" ")
        if name == "close":
            code, _, reason = arg.partition(" ")
            await ws.close(code=int(code), message=reason.encode())
            return True
        if name == "drop":
            assert request.transport is not None
            request.transport.abort()
            return True
        if name == "ping":
            await ws.ping(arg.encode())
        elif name == "burst":
            for i in range(int(arg)):
                await ws.send_str(f"m{i}")
        elif name == "big":
            await ws.send_bytes(pattern(int(arg)))
        return False


@dataclass
class RawClient:
    """A WebSocket client on a bare TCP stream (frames masked, as a browser sends them)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    headers: dict[str, str]

    @classmethod
    async def connect(cls, port: int, path: str = "/", headers: dict[str, str] | None = None) -> "RawClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        fields = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
            **(headers or {}),
        }
        writer.write(request("GET", path, headers=fields, host=None))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        answer = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
        return cls(reader, writer, int(head[0].split(" ")[1]), {k.lower(): v for k, v in answer.items()})

    def send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def send_close(self, code: int, reason: str = "") -> None:
        self.send(0x8, struct.pack("!H", code) + reason.encode())

    async def frame(self) -> tuple[int, bytes]:
        """The next frame (opcode, payload); raises IncompleteReadError at end of stream."""
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if second & 0x80 else b""
        payload = await self.reader.readexactly(size)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return first & 0x0F, payload

    async def close_frame(self) -> tuple[int, str] | None:
        """Read until a close frame: its (code, reason), or None when the stream ends without one."""
        try:
            while True:
                opcode, payload = await self.frame()
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return code, payload[2:].decode()
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def abort(self) -> None:
        """Drop the connection without a close frame, as a crashed browser tab does."""
        self.writer.transport.abort()

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def silent_upstream() -> RawServer:
    """A raw server that accepts TCP connections and never answers (an upgrade Vite ignores)."""

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the edge gives up

    return await raw_upstream(never_answer)
