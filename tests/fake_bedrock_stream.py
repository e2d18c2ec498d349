"""A Bedrock endpoint for the real Claude Code CLI: scripted model turns over AWS event-stream.

The CLI (``CLAUDE_CODE_USE_BEDROCK=1``, ``ANTHROPIC_BEDROCK_BASE_URL`` pointing here) calls

* ``GET /inference-profiles`` — answered with an empty list;
* ``POST /model/<id>/invoke-with-response-stream`` — the Anthropic Messages request; answered
  with ``application/vnd.amazon.eventstream`` frames, each a ``chunk`` event whose payload is
  ``{"bytes": base64(<one Anthropic streaming event>)}``.

Each model request takes the next scripted turn: content blocks (text and tool_use), an
error (HTTP status + ``x-amzn-ErrorType``, as Bedrock answers), or a hang (headers sent,
then nothing until ``released`` is set). With nothing left to say it ends the turn with a short text. Every request
body is kept, so a test reads the ``tools`` the model was offered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from dataclasses import dataclass, field

from aiohttp import web

EVENTSTREAM = "application/vnd.amazon.eventstream"


def _header(name: str, value: str) -> bytes:
    key, data = name.encode(), value.encode()
    return struct.pack("!B", len(key)) + key + struct.pack("!BH", 7, len(data)) + data  # 7: string


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths + CRC32), headers, payload, message CRC32."""
    head = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack("!II", 12 + len(head) + len(payload) + 4, len(head))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + head + payload
    return message + struct.pack("!I", zlib.crc32(message))


def chunk(event: dict) -> bytes:
    payload = json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()}).encode()
    return frame({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}, payload)


def events(content: list[dict], model: str) -> list[dict]:
    """The Anthropic streaming events of one assistant message with ``content``."""
    stop = "tool_use" if any(block["type"] == "tool_use" for block in content) else "end_turn"
    out: list[dict] = [{"type": "message_start", "message": {
        "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}]
    for index, block in enumerate(content):
        if block["type"] == "text":
            out.append({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            out.append({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": block["text"]}})
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            out.append({"type": "content_block_start", "index": index, "content_block": start})
            out.append({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
        out.append({"type": "content_block_stop", "index": index})
    out.append({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 5}})
    out.append({"type": "message_stop"})
    return out


@dataclass
class Turn:
    content: list[dict] = field(default_factory=list)
    status: int = 200
    error_type: str = ""
    message: str = ""
    hang: bool = False


@dataclass
class FakeBedrockModel:
    """Scripted turns, in order; every request body the CLI sent, and the paths it asked for."""

    turns: list[Turn] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    origin: str = ""
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends hung turns (the fixture sets it)
    _uses: int = 0

    def say(self, *content: dict) -> None:
        self.turns.append(Turn(list(content)))

    def text(self, text: str) -> dict:
        return {"type": "text", "text": text}

    def tool(self, name: str, **args) -> dict:
        self._uses += 1
        return {"type": "tool_use", "id": f"toolu_fake{self._uses:04d}", "name": name, "input": args}

    def error(self, status: int, error_type: str, message: str, times: int = 1) -> None:
        self.turns.extend(Turn(status=status, error_type=error_type, message=message) for _ in range(times))

    def hang(self) -> None:
        self.turns.append(Turn(hang=True))

    def tools_offered(self, index: int = 0) -> list[str]:
        return sorted(tool.get("name", "") for tool in self.requests[index].get("tools", []))

    def tool_results(self) -> list[dict]:
        """Every tool_result block the CLI sent back (in the last request, which holds the whole conversation)."""
        if not self.requests:
            return []
        return [block for message in self.requests[-1].get("messages", []) if isinstance(message.get("content"), list)
                for block in message["content"] if block.get("type") == "tool_result"]

    async def profiles(self, request: web.Request) -> web.Response:
        self.paths.append(request.path_qs)
        return web.json_response({"inferenceProfileSummaries": []})

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        self.requests.append(await request.json())
        turn = self.turns.pop(0) if self.turns else Turn([self.text("Done.")])
        if turn.status != 200:
            return web.json_response({"message": turn.message}, status=turn.status,
                                     headers={"x-amzn-ErrorType": f"{turn.error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"})
        response = web.StreamResponse(headers={"Content-Type": EVENTSTREAM, "x-amzn-bedrock-content-type": "application/json"})
        await response.prepare(request)
        if turn.hang:
            await self.released.wait()
            return response
        for event in events(turn.content, request.match_info["model_id"]):
            await response.write(chunk(event))
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/inference-profiles", self.profiles)
        app.router.add_post("/model/{model_id}/invoke-with-response-stream", self.invoke)
        return app
