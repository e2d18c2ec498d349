"""Raw HTTP/1.x over TCP on 127.0.0.1, for tests that send what no client library would.

Build a request with :func:`request` (exact header lines where a test needs
them malformed, repeated or missing), send it with :func:`raw_exchange` or on a
connection from :func:`open_raw`, and read the answer with :func:`read_response`
(one response at a time, keep-alive) or :func:`parse_response` (bytes read to
the end).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Mapping

from multidict import CIMultiDict


def request(
    method: str,
    target: str,
    *lines: str,
    headers: Mapping[str, str] | None = None,
    host: str | None = "localhost",
    connection: str | None = None,
    body: bytes = b"",
    version: str = "1.1",
) -> bytes:
    """One request's bytes: the request line, ``Host`` (unless None), ``lines`` as written,
    ``headers``, then ``Connection`` (when given) and ``body``. Content-Length is the caller's."""
    head = [f"{method} {target} HTTP/{version}"]
    head += [f"Host: {host}"] if host is not None else []
    head += [*lines, *(f"{name}: {value}" for name, value in (headers or {}).items())]
    head += [f"Connection: {connection}"] if connection is not None else []
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def refused(port: int) -> bool:
    """Whether 127.0.0.1:port refuses (or resets) a new connection: nothing listens there any more."""
    try:
        _, writer = await open_raw(port)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    writer.close()
    return False


async def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port and read until the server closes (bounded)."""
    reader, writer = await open_raw(port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """Read one HTTP head (up to the blank line)."""
    return await reader.readuntil(b"\r\n\r\n")


@dataclass
class RawResponse:
    status: int
    headers: CIMultiDict[str]
    body: bytes


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


def parse_response(data: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Status, reason, headers and body of one raw HTTP/1.x response (body left as sent)."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    return int(status), reason, headers, body  # type: ignore[return-value]


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
