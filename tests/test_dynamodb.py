"""Session items in DynamoDB (moto's server on 127.0.0.1): written in the background, never in a request's way."""

from __future__ import annotations

import asyncio
import time

from control.dynamo import DYNAMO, TTL_SECONDS
from control.sessions import REGISTRY
from core.ids import ThreadRef
from edge.tracking import TRACKER
from tests.support.polling import wait_until


async def _item(dynamodb, session_id, check=lambda item: item is not None):
    return await asyncio.to_thread(dynamodb.wait_item, session_id, check)


async def test_items_follow_the_session_life(git_edge, remote, dynamodb):
    api = await git_edge(dynamodb_table=dynamodb.table, dynamodb_heartbeat_seconds=0.2, container_id="task-abc")
    init = await api.init(repo_url=remote.url)
    assert init.status == 200, init.text
    sid = init.body["sessionId"]

    item = await _item(dynamodb, sid, lambda i: (i or {}).get("status") == "active")
    assert item["clientId"] == "c1" and item["userId"] == "u1" and item["threadId"] == "t1"
    assert item["editBranch"] == "thread-t1" and item["createdAt"].endswith("Z")
    assert item["previewUrl"] == f"{api.origin}/session/{sid}/"
    assert item["containerId"] == "task-abc"
    assert abs(item["lastActivity"] / 1000 - time.time()) < 120  # milliseconds, as Hermes writes it
    assert abs(item["ttl"] - (time.time() + TTL_SECONDS)) < 120 and TTL_SECONDS == 1800
    assert [i["sessionId"] for i in dynamodb.active("c1")] == [sid]  # Hermes' own query finds it

    # Activity reaches DynamoDB through the heartbeat.
    first = item["lastActivity"]
    await wait_until(lambda: int(time.time() * 1000) > first, "the next millisecond", 30)
    assert (await api.call("GET", "/api/git/status/c1/u1/t1")).status == 200
    later = await _item(dynamodb, sid, lambda i: i["lastActivity"] > first)
    assert later["status"] == "active" and later["ttl"] >= item["ttl"]

    await api.app[TRACKER].mark_all_idle()  # what the idle shutdown does first
    await _item(dynamodb, sid, lambda i: (i or {}).get("status") == "expired")
    assert dynamodb.active() == []

    # A removed session stays in Hermes' table, expired (the edge never deletes Hermes' items).
    assert (await api.call("DELETE", f"/api/sessions/{sid}")).status == 200
    await _item(dynamodb, sid, lambda i: (i or {}).get("status") == "expired")


async def test_a_failed_init_is_an_error_item(git_edge, remote, dynamodb):
    api = await git_edge(dynamodb_table=dynamodb.table)
    answer = await api.init(t="t9", repo_url=remote.url + "-missing")
    assert answer.status >= 400
    sid = api.app[REGISTRY].session_id_of(ThreadRef("c1", "u1", "t9"))
    await _item(dynamodb, sid, lambda i: (i or {}).get("status") == "expired")


async def test_requests_succeed_while_dynamodb_is_down_and_writes_land_later(git_edge, remote, dynamodb):
    api = await git_edge(dynamodb_table=dynamodb.table, dynamodb_heartbeat_seconds=0.2)
    first = await api.init(t="t1", repo_url=remote.url)
    await _item(dynamodb, first.body["sessionId"], lambda i: (i or {}).get("status") == "active")
    writer = api.app[DYNAMO]

    dynamodb.stop()
    failures = writer.failures
    second = await api.init(t="t2")
    assert second.status == 200, second.text  # the user's request does not wait for DynamoDB
    status = await api.call("GET", "/api/status/c1/u1/t2")
    assert status.status == 200
    sid = second.body["sessionId"]
    await wait_until(lambda: writer.failures > failures, "a failed write", 30)  # it tried, failed, and keeps the update queued
    assert writer.pending >= 1

    dynamodb.start()
    item = await _item(dynamodb, sid, lambda i: (i or {}).get("status") == "active")
    assert item["threadId"] == "t2"
    await wait_until(lambda: writer.pending == 0, "the queued update written", 30)
