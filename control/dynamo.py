"""Session status in DynamoDB (when DYNAMODB_TABLE is set): one item per session.

Writes never touch a user's request: callers only ``put``/``delete`` into a
queue that keeps the latest state per session, and one background task sends
them with boto3 in a thread, with short botocore timeouts and its own retry
with backoff. A DynamoDB that is down or slow is logged and retried; what is
still queued when the edge stops gets a bounded last attempt.

boto3 finds credentials, region and endpoint itself (``AWS_ENDPOINT_URL``
points it at a local DynamoDB).

Item: ``sessionId`` (key), ``clientId``, ``userId``, ``threadId``, ``status``,
``previewUrl``, ``containerId``, ``lastActivity`` and ``ttl`` (epoch seconds;
``ttl`` = lastActivity + 7 days, for DynamoDB's Time to Live).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

log = logging.getLogger("edge.control.dynamo")

TTL_SECONDS = 7 * 24 * 3600
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
MAX_BACKOFF = 30.0
FLUSH_SECONDS = 5.0  # at shutdown, within ECS's stop timeout

DELETE = None  # a queued deletion


def session_item(
    session_id: str,
    client_id: str,
    user_id: str,
    thread_id: str,
    status: str,
    preview_url: str,
    container_id: str,
    last_activity: float,
) -> dict[str, Any]:
    """The item of one session (plain Python values; ``ttl`` for DynamoDB's Time to Live)."""
    last = int(last_activity or time.time())
    return {
        "sessionId": session_id,
        "clientId": client_id,
        "userId": user_id,
        "threadId": thread_id,
        "status": status,
        "previewUrl": preview_url,
        "containerId": container_id,
        "lastActivity": last,
        "ttl": last + TTL_SECONDS,
    }


def _client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": 1},  # the writer retries, with backoff
    )
    return boto3.session.Session().client("dynamodb", config=config)


class DynamoWriter:
    """A queue of session items, coalesced per session, written by one background task."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._pending: dict[str, dict | None] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client: Any = None
        self.written = 0
        self.failures = 0
        self.last_error = ""

    # -- what callers do (never awaits) ------------------------------------------------

    def put(self, item: dict) -> None:
        """Queue the session's latest state (replacing any older queued one)."""
        self._pending[item["sessionId"]] = item
        self._wake.set()

    def delete(self, session_id: str) -> None:
        self._pending[session_id] = DELETE
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- the background task -------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dynamodb writer")

    async def close(self, timeout: float = FLUSH_SECONDS) -> None:
        """Stop the task and give what is queued one bounded last chance."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            session_id, item = next(iter(self._pending.items()))
            try:
                ok = await asyncio.wait_for(self._write(session_id, item), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                ok = False
            if not ok:
                break
        if self._pending:
            log.error("DynamoDB: %d session update(s) not written at shutdown: %s", len(self._pending), self.last_error)

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                session_id, item = next(iter(self._pending.items()))
                if await self._write(session_id, item):
                    backoff = 0.0
                    continue
                backoff = min(max(0.5, backoff * 2), MAX_BACKOFF)
                await asyncio.sleep(backoff)

    async def _write(self, session_id: str, item: dict | None) -> bool:
        """Send one queued state; it leaves the queue only if written and not replaced meanwhile."""
        try:
            await asyncio.to_thread(self._send, session_id, item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # botocore's errors, timeouts, unreachable endpoint, no credentials
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("DynamoDB write for %s failed (will retry): %s", session_id, self.last_error)
            return False
        self.written += 1
        if session_id in self._pending and self._pending[session_id] is item:
            del self._pending[session_id]
        return True

    def _send(self, session_id: str, item: dict | None) -> None:
        from boto3.dynamodb.types import TypeSerializer

        if self._client is None:
            self._client = _client()
        if item is DELETE:
            self._client.delete_item(TableName=self.table, Key={"sessionId": {"S": session_id}})
            return
        serialize = TypeSerializer().serialize
        self._client.put_item(TableName=self.table, Item={k: serialize(v) for k, v in item.items() if v is not None})


DYNAMO = web.AppKey("control_dynamo", DynamoWriter)


def setup(app: web.Application, table: str) -> DynamoWriter:
    """Add the writer to the app; it starts with the app and flushes (bounded) when the app stops."""
    writer = DynamoWriter(table)
    app[DYNAMO] = writer

    async def ctx(app: web.Application):
        writer.start()
        yield
        await writer.close()

    app.cleanup_ctx.append(ctx)
    return writer
