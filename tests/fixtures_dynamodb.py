"""A real DynamoDB API for the tests: moto's server on 127.0.0.1 (a free port), restartable.

Only the tests set fake AWS credentials; boto3 finds the server through its
own ``AWS_ENDPOINT_URL`` variable, as it would find DynamoDB Local.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import free_port
from tests.support.polling import wait_until_blocking

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@dataclass
class FakeDynamo:
    """moto's server; ``stop()``/``start()`` take it away and bring it back (its data stays)."""

    port: int
    table: str
    server: ThreadedMotoServer | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def client(self):
        return boto3.session.Session().client("dynamodb", endpoint_url=self.endpoint, region_name="us-east-1")

    def item(self, session_id: str) -> dict | None:
        """The session's item, found the way Hermes' table is keyed (a Query on the hash key)."""
        found = self.client().query(
            TableName=self.table,
            KeyConditionExpression="sessionId = :s",
            ExpressionAttributeValues={":s": {"S": session_id}},
            ConsistentRead=True,
        )["Items"]
        assert len(found) <= 1, f"more than one item for {session_id}: {found}"
        return _plain(found[0]) if found else None

    def active(self, client_id: str | None = None) -> list[dict]:
        """What Hermes lists: a Query on StatusIndex for status = active, optionally of one client."""
        query = {
            "TableName": self.table,
            "IndexName": "StatusIndex",
            "KeyConditionExpression": "#s = :active",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":active": {"S": "active"}},
        }
        if client_id is not None:
            query["FilterExpression"] = "clientId = :c"
            query["ExpressionAttributeValues"][":c"] = {"S": client_id}
        return [_plain(raw) for raw in self.client().query(**query)["Items"]]

    def put_hermes_item(self, session_id: str, user_id: str, client_id: str, thread_id: str) -> None:
        """The item Hermes writes when it starts a session (before the edge ever hears of it)."""
        now = time.time()
        self.client().put_item(TableName=self.table, Item={
            "sessionId": {"S": session_id},
            "userId": {"S": user_id},
            "clientId": {"S": client_id},
            "threadId": {"S": thread_id},
            "status": {"S": "initializing"},
            "lastActivity": {"N": str(int(now * 1000))},
            "ttl": {"N": str(int(now) + 1800)},
            "editBranch": {"S": f"thread-{thread_id}"},
            "createdAt": {"S": "2026-12-01T10:00:00.000Z"},
            "hermesOwn": {"S": "kept"},
        })

    def wait_item(self, session_id: str, check=lambda item: item is not None, timeout: float = 30.0) -> dict | None:
        """The item once ``check(item)`` holds (a bounded wait: the writer is asynchronous).

        moto applies an UpdateItem's SET actions one at a time, so a read that
        races a write can see a new item without all its attributes yet:
        ``check`` must not assume an attribute is there.
        """
        item: dict | None = None

        def matched() -> tuple[dict | None] | None:
            nonlocal item
            item = self.item(session_id)
            return (item,) if check(item) else None

        (found,) = wait_until_blocking(matched, f"the DynamoDB item of {session_id} to match", timeout, detail=lambda: f"last: {item}")
        return found


def _plain(raw: dict) -> dict:
    return {k: (int(v["N"]) if "N" in v else v.get("S")) for k, v in raw.items()}


@pytest.fixture
def dynamodb(monkeypatch) -> Iterator[FakeDynamo]:
    """moto's DynamoDB on 127.0.0.1 with a fresh table; boto3 in this process points at it."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    fake = FakeDynamo(free_port(), f"edge-sessions-{secrets.token_hex(4)}")
    monkeypatch.setenv("AWS_ENDPOINT_URL", fake.endpoint)
    fake.env = {**AWS_ENV, "AWS_ENDPOINT_URL": fake.endpoint}
    fake.start()
    # Hermes' table, as its infrastructure creates it.
    fake.client().create_table(
        TableName=fake.table,
        KeySchema=[{"AttributeName": "sessionId", "KeyType": "HASH"}, {"AttributeName": "userId", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "sessionId", "AttributeType": "S"},
            {"AttributeName": "userId", "AttributeType": "S"},
            {"AttributeName": "status", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[{
            "IndexName": "StatusIndex",
            "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "ALL"},
        }],
        BillingMode="PAY_PER_REQUEST",
    )
    yield fake
    fake.stop()
