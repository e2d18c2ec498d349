"""Session status in DynamoDB (when DYNAMODB_TABLE is set), in the shape Hermes reads.

Hermes' table (``webordinary-edit-sessions``, made by the infrastructure, never
here) is keyed by ``sessionId`` (HASH) and ``userId`` (RANGE), with a global
secondary index ``StatusIndex`` on ``status``. Hermes writes an item when it
starts a session; the edge only ever updates items (``UpdateItem ... SET``),
so the attributes Hermes wrote survive. The item's ``userId`` is found once
per session with a Query on ``sessionId`` (Hermes' own), else it is the
session's ``userEmail`` or the edge's user id.

Attributes the edge sets: ``status`` (``initializing``, ``active`` while this
container serves the session, ``expired`` after an idle shutdown, SIGTERM or
its removal), ``lastActivity`` (epoch **milliseconds**), ``ttl`` (epoch seconds,
now + 30 minutes on each write), ``editBranch``, ``previewUrl``,
``containerId``, ``containerIp`` (ECS task metadata), and when absent
``threadId``, ``clientId`` and ``createdAt`` (ISO 8601).

Writes never touch a user's request: callers only ``put`` into a queue that
keeps the latest state per session, and one background task sends them with
boto3 in a thread, with short botocore timeouts and its own retry with
backoff. A DynamoDB that is down or slow is logged and retried; what is still
queued when the edge stops gets a bounded last attempt. boto3 finds
credentials itself; the region is AWS_REGION or AWS_DEFAULT_REGION, and
``AWS_ENDPOINT_URL_DYNAMODB`` (or ``AWS_ENDPOINT_URL``) points it elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from core.ids import ThreadRef

log = logging.getLogger(__name__)

TTL_SECONDS = 30 * 60
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
MAX_BACKOFF = 30.0
ABSENT_SECONDS = 10.0  # a session without an item is looked up again after this long
FLUSH_SECONDS = 5.0  # at shutdown, within ECS's stop timeout

# The edge's session statuses in Hermes' words.
HERMES_STATUS = {"initializing": "initializing", "ready": "active", "idle": "expired", "error": "expired",
                 "expired": "expired", "draining": "draining"}

# Set on every write / only where the item has none yet.
_ALWAYS = ("status", "lastActivity", "ttl", "editBranch", "previewUrl", "containerId", "containerIp")
_IF_ABSENT = ("threadId", "clientId", "createdAt")


def iso_ms(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def session_item(
    session_id: str,
    thread: ThreadRef,
    status: str,
    preview_url: str,
    container_id: str,
    last_activity: float,
    *,
    user_key: str = "",
    branch: str = "",
    created: float = 0.0,
    container_ip: str = "",
) -> dict[str, Any]:
    """The attributes of one session (plain Python values).

    ``userId`` is the range key's fallback: ``user_key`` (Hermes' userEmail) when given, else the thread's user.
    """
    now = time.time()
    return {
        "sessionId": session_id,
        "userId": user_key or thread.user_id,
        "clientId": thread.client_id,
        "threadId": thread.thread_id,
        "status": HERMES_STATUS.get(status, "active"),
        "previewUrl": preview_url or None,
        "containerId": container_id or None,
        "containerIp": container_ip or None,
        "editBranch": branch or None,
        "createdAt": iso_ms(created or now),
        "lastActivity": int((last_activity or now) * 1000),
        "ttl": int(now) + TTL_SECONDS,
    }


def update_request(table: str, key: dict[str, str], item: dict[str, Any]) -> dict[str, Any]:
    """The ``UpdateItem`` call for ``item``: SET what the edge owns, keep what Hermes wrote first."""
    from boto3.dynamodb.types import TypeSerializer

    serialize = TypeSerializer().serialize
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    parts: list[str] = []
    for index, name in enumerate((*_ALWAYS, *_IF_ABSENT)):
        value = item.get(name)
        if value is None:
            continue
        names[f"#a{index}"] = name
        values[f":v{index}"] = serialize(value)
        if name in _IF_ABSENT:
            parts.append(f"#a{index} = if_not_exists(#a{index}, :v{index})")
        else:
            parts.append(f"#a{index} = :v{index}")
    return {
        "TableName": table,
        "Key": {name: {"S": value} for name, value in key.items()},
        "UpdateExpression": "SET " + ", ".join(parts),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def client(region: str | None = None) -> Any:
    """A DynamoDB client with short timeouts (the writer retries itself, with backoff)."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": 1},  # the writer retries, with backoff
    )
    return boto3.session.Session().client("dynamodb", config=config, region_name=region)


class DynamoWriter:
    """A queue of session items, coalesced per session, written by one background task."""

    def __init__(self, table: str, region: str | None = None) -> None:
        self.table = table
        self.region = region
        self._pending: dict[str, dict] = {}
        self._range: dict[str, str] = {}  # sessionId → the userId of its item (found once)
        self._absent: dict[str, float] = {}  # sessionId → until when "no item" is believed
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._client: Any = None
        self.written = 0
        self.failures = 0
        self.last_error = ""
        self.container_ip = ""  # the task's private IP (ECS task metadata), when known

    # -- what callers do (never awaits) ------------------------------------------------

    def put(self, item: dict) -> None:
        """Queue the session's latest state (replacing any older queued one)."""
        self._pending[item["sessionId"]] = item
        self._wake.set()

    def expire(self, session_id: str, item: dict) -> None:
        """The session is gone from this edge: its item says ``expired`` (Hermes' items are never deleted)."""
        self.put({**item, "status": "expired"})

    async def has_session(self, session_id: str) -> bool:
        """Whether the table has an item for the session (Hermes made it); remembered once true."""
        if session_id in self._range:
            return True
        now = time.monotonic()
        if self._absent.get(session_id, 0.0) > now:
            return False
        try:
            user_id = await asyncio.to_thread(self._find_user, session_id)
        except Exception as exc:
            log.warning("DynamoDB lookup of session %s failed: %s", session_id, exc)
            user_id = None
        if user_id is None:
            if len(self._absent) > 10_000:
                self._absent.clear()
            self._absent[session_id] = now + ABSENT_SECONDS
            return False
        self._range[session_id] = user_id
        return True

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

    async def _write(self, session_id: str, item: dict) -> bool:
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

    def _find_user(self, session_id: str) -> str | None:
        """The ``userId`` (range key) of the session's item, if the table has one (a Query on the hash key)."""
        if self._client is None:
            self._client = client(self.region)
        found = self._client.query(
            TableName=self.table,
            KeyConditionExpression="sessionId = :s",
            ExpressionAttributeValues={":s": {"S": session_id}},
            ProjectionExpression="userId",
            ConsistentRead=True,
            Limit=1,
        ).get("Items") or []
        return found[0]["userId"].get("S") if found and "userId" in found[0] else None

    def _send(self, session_id: str, item: dict) -> None:
        user_id = self._range.get(session_id) or self._find_user(session_id) or item["userId"]
        if self.container_ip and not item.get("containerIp"):
            item = {**item, "containerIp": self.container_ip}
        self._client.update_item(**update_request(self.table, {"sessionId": session_id, "userId": user_id}, item))
        self._range[session_id] = user_id


DYNAMO = web.AppKey("control_dynamo", DynamoWriter)


async def container_ip(metadata_uri: str | None) -> str:
    """The task's private IPv4 address from ECS task metadata (v4), or "" (not on ECS, or no answer)."""
    if not metadata_uri:
        return ""
    import aiohttp

    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            async with session.get(metadata_uri.rstrip("/")) as response:
                data = await response.json(content_type=None)
        for network in data.get("Networks") or []:
            for address in network.get("IPv4Addresses") or []:
                if isinstance(address, str) and address:
                    return address
    except Exception as exc:  # no metadata endpoint: not fatal, the item just has no containerIp
        log.warning("ECS task metadata gave no container IP: %s", exc)
    return ""


def setup(app: web.Application, table: str, region: str | None = None, metadata_uri: str | None = None) -> DynamoWriter:
    """Add the writer to the app; it starts with the app and flushes (bounded) when the app stops."""
    writer = DynamoWriter(table, region)
    app[DYNAMO] = writer

    async def ctx(app: web.Application):
        writer.container_ip = await container_ip(metadata_uri)
        writer.start()
        yield
        await writer.close()

    app.cleanup_ctx.append(ctx)
    return writer
