"""The proxy log: JSON lines with redacted secrets, header changes, the recent records per session."""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiohttp
import pytest
from multidict import CIMultiDict

from edge import proxylog
from edge.flow import ProxyFlow
from edge.proxylog import JsonLines, ProxyLog
from edge.redact import redact_header, redact_query
from tests.logged_upstream import PUBLIC_HOST, SECRETS, UPLOAD, logged_edge, secret_traffic
from tests.support.polling import wait_until


def _changes(record: dict, direction: str, name: str) -> list[dict]:
    return [c for c in record["changes"] if c["direction"] == direction and c["name"].lower() == name.lower()]


async def test_json_lines_carry_the_exchange_and_no_secret(edge, serve):
    stream = io.StringIO()
    log = ProxyLog([JsonLines(stream=stream)])
    server, upstream = await logged_edge(edge, serve, proxy_log=log)
    before = time.time()
    async with aiohttp.ClientSession() as client:
        await secret_traffic(client, server.url)
    await wait_until(lambda: stream.getvalue().count("\n") == 5, "five log lines")

    output = stream.getvalue()
    for name, secret in SECRETS.items():
        assert secret not in output, f"{name} leaked into the proxy log"
    page, hop, redirect, upload, socket = (json.loads(line) for line in output.splitlines())
    up_host = f"127.0.0.1:{upstream.port}"

    assert page["type"] == "proxy" and page["session"] == "s1" and page["match"] == "prefix"
    assert page["method"] == "GET" and page["status"] == 200
    assert page["path"] == "/session/s1/page?token=[redacted]&v=1"
    assert page["upstream"] == f"http://{up_host}/page?token=[redacted]&v=1"
    assert page["clientHost"] == PUBLIC_HOST and page["upstreamHost"] == up_host
    assert page["bytesIn"] == 0 and page["bytesOut"] == len("hello page")
    assert before - 1 <= page["time"] <= time.time() and page["durationMs"] >= 0
    assert _changes(page, "request", "Host") == [
        {"direction": "request", "action": "rewritten", "name": "Host", "old": PUBLIC_HOST, "new": up_host}
    ]
    assert _changes(page, "request", "X-Forwarded-Host")[0]["new"] == PUBLIC_HOST
    assert _changes(page, "request", "X-Forwarded-Prefix")[0]["new"] == "/session/s1"
    # Secret header values are hidden, their names and schemes kept for debugging.
    assert _changes(page, "request", "Proxy-Authorization")[0] == {
        "direction": "request", "action": "removed", "name": "Proxy-Authorization", "old": "Basic [redacted]", "new": None,
    }  # fmt: skip
    cookie = _changes(page, "request", "Cookie")[0]
    assert (cookie["action"], cookie["old"], cookie["new"]) == ("rewritten", "edge_session=[redacted]; sid=[redacted]", "sid=[redacted]")

    assert _changes(hop, "request", "Authorization")[0]["old"] == "Bearer [redacted]"
    assert _changes(hop, "response", "Set-Cookie")[0]["old"] == "hop=[redacted]"

    location = _changes(redirect, "response", "Location")[0]
    assert location["old"] == f"http://{up_host}/next?token=[redacted]&v=2"
    assert location["new"] == f"http://{PUBLIC_HOST}/session/s1/next?token=[redacted]&v=2"
    assert redirect["status"] == 302

    assert upload["method"] == "POST" and upload["bytesIn"] == len(UPLOAD) and upload["bytesOut"] == len(str(len(UPLOAD)))

    assert socket["websocket"] is True and socket["status"] == 101
    assert socket["path"] == "/session/s1/hmr?token=[redacted]"
    assert socket["upstream"] == f"http://{up_host}/hmr?token=[redacted]"
    assert (socket["messagesIn"], socket["messagesOut"], socket["closeCode"]) == (1, 1, 1000)
    assert socket["bytesIn"] == len("ping") and socket["bytesOut"] == len("echo ping")


async def test_recent_records_are_redacted_too(edge, serve):
    log = ProxyLog()
    server, _ = await logged_edge(edge, serve, proxy_log=log)
    async with aiohttp.ClientSession() as client:
        await secret_traffic(client, server.url)
    await wait_until(lambda: len(log.recent.records) == 5, "five records")
    dumped = json.dumps(list(log.recent.records))
    for name, secret in SECRETS.items():
        assert secret not in dumped, f"{name} leaked into the recent records"


async def test_every_proxied_response_names_its_session(edge, serve):
    log = ProxyLog()
    server, _ = await logged_edge(edge, serve, proxy_log=log)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/session/s1/page")) as resp:
            assert resp.headers["X-Edge-Session"] == "s1"
        async with client.ws_connect(server.url("/session/s1/hmr")) as ws:
            await ws.close()
    await wait_until(lambda: len(log.recent.records) == 2, "two records")
    for record in log.recent.records:
        assert _changes(record, "response", "X-Edge-Session") == [
            {"direction": "response", "action": "added", "name": "X-Edge-Session", "old": None, "new": "s1"}
        ]


async def test_recent_records_by_session(edge, serve):
    log = ProxyLog()
    server, _ = await logged_edge(edge, serve, ("s1", "s2"), proxy_log=log)
    async with aiohttp.ClientSession() as client:
        for session, n in [("s1", 1), ("s2", 1), ("s1", 2), ("s1", 3), ("s2", 2)]:
            async with client.get(server.url(f"/session/{session}/page?n={n}")) as resp:
                assert resp.status == 200
    assert [r["path"] for r in log.recent.for_session("s1", 2)] == ["/session/s1/page?n=2", "/session/s1/page?n=3"]
    assert [r["path"] for r in log.recent.for_session("s2", 10)] == ["/session/s2/page?n=1", "/session/s2/page?n=2"]
    assert len(log.recent.for_session("s1")) == 3
    assert log.recent.for_session("nobody") == []
    assert log.recent.for_session("s1", 0) == []


class _Broken:
    def flow_done(self, flow: ProxyFlow) -> None:
        raise RuntimeError("addon bug")

    def close(self) -> None:
        raise RuntimeError("addon bug on close")


async def test_a_failing_addon_breaks_neither_the_request_nor_the_other_addons(edge, serve):
    stream = io.StringIO()
    log = ProxyLog([_Broken(), JsonLines(stream=stream)])
    server, _ = await logged_edge(edge, serve, proxy_log=log)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/session/s1/page")) as resp:
            assert await resp.text() == "hello page"
    await wait_until(lambda: stream.getvalue().endswith("\n"), "the other addon's line")
    assert json.loads(stream.getvalue())["status"] == 200
    log.close()  # must not raise


class _ClosedStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


async def test_a_failing_stdout_does_not_break_the_request(edge, serve):
    log = ProxyLog([JsonLines(stream=_ClosedStream())])
    server, _ = await logged_edge(edge, serve, proxy_log=log)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/session/s1/page")) as resp:
            assert await resp.text() == "hello page"
    assert len(log.recent.records) == 1


class _Writes(io.StringIO):
    """A stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


async def batched_edge(edge, serve, monkeypatch, delay: float):
    """An edge whose proxy log hands its flows on ``delay`` seconds after they end: (server, log, stream)."""
    monkeypatch.setattr(proxylog, "PUBLISH_DELAY", delay)
    stream = _Writes()
    log = ProxyLog([JsonLines(stream=stream)])
    server, _ = await logged_edge(edge, serve, proxy_log=log)
    return server, log, stream


async def test_a_burst_of_requests_is_logged_in_one_write_soon_after(edge, serve, monkeypatch):
    server, _, stream = await batched_edge(edge, serve, monkeypatch, 1.0)  # room for the burst on a busy machine
    async with aiohttp.ClientSession() as client:

        async def get(n: int) -> None:
            async with client.get(server.url(f"/session/s1/page?n={n}")) as resp:
                assert await resp.text() == "hello page"

        await asyncio.gather(*(get(n) for n in range(5)))
        assert stream.writes == []  # nothing is encoded or written while the burst is answered
        await wait_until(lambda: stream.writes, "the burst's lines", timeout=20)
    lines = "".join(stream.writes).splitlines()
    assert len(stream.writes) < len(lines)  # the batch's lines leave together (in writes of whole lines up to PIPE_BUF)
    assert sorted(json.loads(line)["path"] for line in lines) == [
        f"/session/s1/page?n={n}" for n in range(5)
    ]


async def test_the_recent_records_include_flows_not_yet_written(edge, serve, monkeypatch):
    server, log, stream = await batched_edge(edge, serve, monkeypatch, 60.0)  # only the read can hand the flow on
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/session/s1/page")) as resp:
            assert resp.status == 200
    assert [r["path"] for r in log.recent.for_session("s1")] == ["/session/s1/page"]
    await asyncio.sleep(0)  # and reading them sent the line on its way
    assert len(stream.writes) == 1


async def test_closing_the_log_writes_the_flows_still_waiting_for_their_batch():
    stream = _Writes()
    log = ProxyLog([JsonLines(stream=stream)])
    flow = ProxyFlow("s1", "prefix", "GET", "/session/s1/x", "HTTP/1.1", "127.0.0.1", CIMultiDict())
    flow.finish()
    log.flow_done(flow)
    assert stream.writes == []  # waiting for its batch
    log.close()  # the app's cleanup, on SIGTERM
    assert [json.loads(line)["path"] for line in "".join(stream.writes).splitlines()] == ["/session/s1/x"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("/?token=abc", "/?token=[redacted]"),
        ("/x?v=1&access_token=a&id_token=b&api_key=c&apikey=d", "/x?v=1&access_token=[redacted]&id_token=[redacted]&api_key=[redacted]&apikey=[redacted]"),
        ("/cb?code=abc&state=xyz", "/cb?code=[redacted]&state=xyz"),
        ("/f?X-Amz-Signature=s&X-Amz-Credential=c&X-Amz-Security-Token=t&X-Amz-Date=d", "/f?X-Amz-Signature=[redacted]&X-Amz-Credential=[redacted]&X-Amz-Security-Token=[redacted]&X-Amz-Date=d"),
        ("/login?user=amy&password=p&client_secret=s", "/login?user=amy&password=[redacted]&client_secret=[redacted]"),
        ("/@vite/client", "/@vite/client"),
        ("/src/a.ts?t=1700000000&import", "/src/a.ts?t=1700000000&import"),
        ("/x?token=", "/x?token="),
        ("/x?v=token&id=1", "/x?v=token&id=1"),  # a secret's name as a value: nothing to hide
        ("/x?astro&type=script&index=0&lang.ts", "/x?astro&type=script&index=0&lang.ts"),
        ("/x?pa\u017fsword=p&v=1", "/x?pa\u017fsword=[redacted]&v=1"),  # ſ is an s when case is ignored
        ("/x?API_KEY=k&Token=t", "/x?API_KEY=[redacted]&Token=[redacted]"),
        ("/x?a=1&sig=2&b=3", "/x?a=1&sig=[redacted]&b=3"),
        ("/x?code=1", "/x?code=[redacted]"),
        ("http://127.0.0.1:4321/?token=abc#f", "http://127.0.0.1:4321/?token=[redacted]#f"),
    ],
)
def test_query_redaction(raw, expected):
    assert redact_query(raw) == expected


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("Authorization", "Bearer abc.def", "Bearer [redacted]"),
        ("authorization", "abcdef", "[redacted]"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz", "Basic [redacted]"),
        ("Cookie", "a=1; b=2", "a=[redacted]; b=[redacted]"),
        ("Set-Cookie", "sid=abc; Path=/; HttpOnly; SameSite=Lax", "sid=[redacted]; Path=/; HttpOnly; SameSite=Lax"),
        ("X-Api-Key", "k", "[redacted]"),
        ("Location", "/next?token=abc", "/next?token=[redacted]"),
        ("Referer", "https://h/session/s1/?token=abc", "https://h/session/s1/?token=[redacted]"),
        ("Host", "edit.amelia.webordinary.com", "edit.amelia.webordinary.com"),
        ("X-Forwarded-For", "10.0.0.1", "10.0.0.1"),
    ],
)
def test_header_redaction(name, value, expected):
    assert redact_header(name, value) == expected
    assert redact_header(name, None) is None


async def test_edge_session_cookie_set_by_the_edge_is_recorded(edge, serve):
    log = ProxyLog()
    server, _ = await logged_edge(edge, serve, proxy_log=log)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.get(server.url("/session/s1/page")) as resp:
            assert "edge_session=s1" in resp.headers.getall("Set-Cookie")[-1]
    added = _changes(log.recent.records[0], "response", "Set-Cookie")
    assert added and added[0]["action"] == "added" and added[0]["new"] == "edge_session=[redacted]"
