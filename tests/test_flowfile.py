"""EDGE_FLOW_LOG: mitmproxy flow files that the real ``mitmdump`` reads, with no secret on disk."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from mitmproxy.io import FlowReader

from edge import keys
from edge.flowfile import FlowFile
from edge.proxylog import ProxyLog
from edge.settings import Settings
from tests.conftest import free_port
from tests.logged_upstream import PUBLIC_HOST, SECRETS, UPLOAD, logged_edge, secret_traffic
from tests.support.polling import wait_until
from tests.support.routes import add_route

MITMDUMP = Path(sys.executable).parent / "mitmdump"
# A mitmproxy addon that prints each flow it reads as one JSON line (mitmdump fires
# `response` for a flow with a response, `error` for one that only has an error).
DUMP_ADDON = """
import json

def _emit(flow):
    r, s = flow.request, flow.response
    print("EDGEFLOW " + json.dumps({
        "id": flow.id,
        "comment": flow.comment,
        "method": r.method,
        "url": r.url,
        "path": r.path,
        "requestHeaders": [[k, v] for k, v in r.headers.items(multi=True)],
        "requestBody": None if r.raw_content is None else len(r.raw_content),
        "status": s.status_code if s else None,
        "responseHeaders": [[k, v] for k, v in s.headers.items(multi=True)] if s else None,
        "error": flow.error.msg if flow.error else None,
        "closeCode": flow.websocket.close_code if flow.websocket else None,
    }), flush=True)

def response(flow):
    _emit(flow)

def error(flow):
    if flow.response is None:
        _emit(flow)
"""


async def mitmdump(path: Path, tmp_path: Path, *filters: str) -> tuple[list[dict], str]:
    """Run the real ``mitmdump -nr`` on a flow file: the flows it read, and its own output."""
    script = tmp_path / "dump_addon.py"
    script.write_text(DUMP_ADDON)
    proc = await asyncio.create_subprocess_exec(
        str(MITMDUMP), "-nr", str(path), "-s", str(script), "--set", "flow_detail=2", *filters,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "Failed to read" not in text and "Traceback" not in text, text
    flows = [json.loads(line.split(" ", 1)[1]) for line in text.splitlines() if line.startswith("EDGEFLOW ")]
    return flows, text


def header(flow: dict, name: str, side: str = "requestHeaders") -> list[str]:
    return [v for k, v in flow[side] or () if k.lower() == name.lower()]


def flow_file_of(server) -> FlowFile:
    return next(a for a in server.app[keys.PROXY_LOG].addons if isinstance(a, FlowFile))


async def flushed(server, files: FlowFile) -> bool:
    """The flows that ended, handed on now (not after their batch's delay) and written: ``files.flush()``."""
    server.app[keys.PROXY_LOG].publish()
    return await asyncio.to_thread(files.flush)


async def test_mitmdump_reads_both_sides_of_every_exchange(edge, serve, tmp_path):
    path = tmp_path / "flows.mitm"
    server, upstream = await logged_edge(edge, serve, flow_log=path)  # as with EDGE_FLOW_LOG: the app's own proxy log
    add_route(server, "gone", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    async with aiohttp.ClientSession() as client:
        await secret_traffic(client, server.url)
        await wait_until(lambda: len(server.app[keys.PROXY_LOG].recent.records) == 5, "five exchanges")
        async with client.get(server.url("/session/gone/x"), headers={"Host": PUBLIC_HOST}) as resp:
            assert resp.status == 502
    server.app[keys.PROXY_LOG].publish()  # the last flow's batch, without waiting for it
    files = flow_file_of(server)
    await asyncio.to_thread(files.close)  # close writes whatever is pending
    assert files.written == 6 and files.dropped == 0

    data = path.read_bytes()
    for name, secret in SECRETS.items():
        assert secret.encode() not in data, f"{name} is on disk"
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    flows, text = await mitmdump(path, tmp_path)
    assert len(flows) == 12
    up_host = f"127.0.0.1:{upstream.port}"
    pairs = list(zip(flows[::2], flows[1::2]))
    for client_side, upstream_side in pairs:
        assert client_side["comment"].startswith("client side; session=")
        assert upstream_side["comment"].startswith("upstream side; session=")
        assert client_side["id"] in upstream_side["comment"]  # the JSON log's id names the pair
        assert header(client_side, "Host") == [PUBLIC_HOST]
        assert client_side["url"].startswith(f"http://{PUBLIC_HOST}/session/")
    records = list(server.app[keys.PROXY_LOG].recent.records)
    assert [c["id"] for c, _ in pairs[:5]] == [r["id"] for r in records[:5]]

    (page_c, page_u), (hop_c, hop_u), (redirect_c, redirect_u), (upload_c, upload_u), (ws_c, ws_u), (gone_c, gone_u) = pairs
    # The original request, as the browser sent it...
    assert (page_c["method"], page_c["path"], page_c["status"]) == ("GET", "/session/s1/page?token=[redacted]&v=1", 200)
    assert header(page_c, "Authorization") == ["Bearer [redacted]"]
    assert header(page_c, "Proxy-Authorization") == ["Basic [redacted]"]
    assert header(page_c, "Cookie") == ["edge_session=[redacted]; sid=[redacted]"]
    assert header(page_c, "X-Api-Key") == ["[redacted]"]
    assert header(page_c, "Referer") == [f"http://{PUBLIC_HOST}/session/s1/?token=[redacted]"]
    assert header(page_c, "X-Edge-Session", "responseHeaders") == ["s1"]
    assert header(page_c, "Set-Cookie", "responseHeaders") == ["up=[redacted]; Path=/; HttpOnly"]
    assert " | request: rewritten Host: edit.amelia.webordinary.com -> " + up_host + " | " in page_c["comment"]
    assert " | response: added X-Edge-Session: s1 | " in page_c["comment"]
    # ...and the rewritten one, as the upstream got it.
    assert page_u["url"] == f"http://{up_host}/page?token=[redacted]&v=1"
    assert header(page_u, "Host") == [up_host]
    assert header(page_u, "X-Forwarded-Host") == [PUBLIC_HOST]
    assert header(page_u, "X-Forwarded-Prefix") == ["/session/s1"]
    assert header(page_u, "Cookie") == ["sid=[redacted]"]
    assert header(page_u, "Proxy-Authorization") == []
    assert header(page_u, "X-Edge-Session", "responseHeaders") == []
    assert page_u["status"] == 200

    assert header(hop_u, "Set-Cookie", "responseHeaders") == ["hop=[redacted]"]
    assert header(hop_c, "Set-Cookie", "responseHeaders") == []

    assert redirect_c["status"] == redirect_u["status"] == 302
    assert header(redirect_u, "Location", "responseHeaders") == [f"http://{up_host}/next?token=[redacted]&v=2"]
    assert header(redirect_c, "Location", "responseHeaders") == [f"http://{PUBLIC_HOST}/session/s1/next?token=[redacted]&v=2"]

    assert (upload_c["method"], upload_u["path"]) == ("POST", "/upload")
    assert upload_c["requestBody"] is None  # "content missing": streamed, not captured
    assert page_c["requestBody"] == 0
    assert f"body bytes: in {len(UPLOAD)}, out 4 (not captured)" in upload_c["comment"]

    assert (ws_c["status"], ws_u["status"]) == (101, 101)
    assert ws_c["path"] == "/session/s1/hmr?token=[redacted]" and ws_u["path"] == "/hmr?token=[redacted]"
    assert ws_c["closeCode"] == 1000
    assert "WebSocket messages: in 1 (4 B), out 1 (9 B)" in ws_c["comment"]

    assert gone_c["status"] == 502 and gone_c["error"].startswith("upstream unreachable")
    assert gone_u["status"] is None and gone_u["error"].startswith("upstream unreachable")

    # mitmdump's own display and filters, as an operator uses them.
    assert f"GET http://{PUBLIC_HOST}/session/s1/page?token=[redacted]&v=1" in text
    assert f"GET http://{up_host}/page?token=[redacted]&v=1" in text
    assert f"Host: {up_host}" in text
    upstream_only, _ = await mitmdump(path, tmp_path, '~comment "^upstream side" & ~comment "session=s1;"')
    assert [f["id"] for f in upstream_only] == [u["id"] for _, u in pairs[:5]]


async def test_a_failing_disk_drops_flows_and_never_a_request(edge, serve, tmp_path):
    path = tmp_path / "not-yet" / "flows.mitm"
    server, _ = await logged_edge(edge, serve, flow_log=path)
    files = flow_file_of(server)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/session/s1/page?n=1")) as resp:
            assert await resp.text() == "hello page"
        assert await flushed(server, files)
        assert files.dropped == 1 and not path.exists()

        path.parent.mkdir()  # the disk is back: the next flow is written
        async with client.get(server.url("/session/s1/page?n=2")) as resp:
            assert await resp.text() == "hello page"
        assert await flushed(server, files)
    assert (files.written, files.dropped) == (1, 1)
    flows, _ = await mitmdump(path, tmp_path)
    assert [f["path"] for f in flows] == ["/session/s1/page?n=2", "/page?n=2"]


@pytest.mark.timeout(60)  # if writing blocked the event loop, this test would hang here
async def test_a_stuck_disk_does_not_hold_up_requests(edge, serve, tmp_path):
    fifo = tmp_path / "flows.fifo"
    os.mkfifo(fifo)  # opening it for writing blocks until someone reads: a stuck disk
    server, _ = await logged_edge(edge, serve, flow_log=fifo)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        for n in range(3):
            async with client.get(server.url(f"/session/s1/page?n={n}")) as resp:
                assert await resp.text() == "hello page"

    received: list[bytes] = []

    def read_all() -> None:
        with open(fifo, "rb") as reader:
            received.append(reader.read())

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()  # the disk comes back: everything queued is written
    files = flow_file_of(server)
    assert await flushed(server, files)
    await asyncio.to_thread(files.close)
    await asyncio.to_thread(reader.join, 10)
    paths = [f.request.path for f in FlowReader(io.BytesIO(received[0])).stream()]
    assert paths == ["/session/s1/page?n=0", "/page?n=0", "/session/s1/page?n=1", "/page?n=1", "/session/s1/page?n=2", "/page?n=2"]


def test_edge_flow_log_variable_turns_the_flow_file_on(tmp_path):
    from edge.app import proxy_log_for

    settings = Settings.from_env({"EDGE_FLOW_LOG": str(tmp_path / "f.mitm")})
    assert settings.flow_log == tmp_path / "f.mitm"
    log = proxy_log_for(settings)
    try:
        assert [type(a).__name__ for a in log.addons] == ["Recent", "JsonLines", "FlowFile"]
    finally:
        log.close()
    assert not any(isinstance(a, FlowFile) for a in proxy_log_for(Settings.from_env({})).addons)


async def test_a_dead_writer_process_is_replaced(edge, serve, tmp_path):
    path = tmp_path / "flows.mitm"
    server, _ = await logged_edge(edge, serve, flow_log=path)
    files = flow_file_of(server)
    async with aiohttp.ClientSession() as client:
        async with client.get(server.url("/session/s1/page?n=1")) as resp:
            assert resp.status == 200
        assert await flushed(server, files)
        writer = files._child
        assert writer is not None
        # The writer gets none of the edge's environment (GITHUB_TOKEN, EDGE_API_TOKEN...).
        environ = Path(f"/proc/{writer.pid}/environ").read_bytes().split(b"\0")
        assert {item.split(b"=", 1)[0] for item in environ if item} == {b"PYTHONPATH"}
        writer.kill_now()
        await wait_until(lambda: not Path(f"/proc/{writer.pid}").exists(), "the killed writer to be reaped", 10)

        async with client.get(server.url("/session/s1/page?n=2")) as resp:
            assert resp.status == 200
        assert await flushed(server, files)
    assert files._child is not writer and (files.written, files.dropped) == (2, 0)
    flows, _ = await mitmdump(path, tmp_path)
    assert [f["path"] for f in flows] == ["/session/s1/page?n=1", "/page?n=1", "/session/s1/page?n=2", "/page?n=2"]


async def test_a_full_file_is_rotated_and_both_stay_readable(edge, serve, tmp_path):
    path = tmp_path / "flows.mitm"
    files = FlowFile(path, max_bytes=12_000)  # room for a few exchanges per file
    server, _ = await logged_edge(edge, serve, proxy_log=ProxyLog([files]))
    async with aiohttp.ClientSession() as client:
        for n in range(6):
            async with client.get(server.url(f"/session/s1/page?n={n}")) as resp:
                assert resp.status == 200
            assert await flushed(server, files)
    await asyncio.to_thread(files.close)
    older = path.with_name("flows.mitm.1")
    assert older.stat().st_size <= 12_000 and path.stat().st_size <= 12_000
    paths = []
    for part in (older, path):
        with part.open("rb") as fo:
            paths += [f.request.path for f in FlowReader(fo).stream() if f.comment.startswith("client side")]
    assert paths == [f"/session/s1/page?n={n}" for n in range(6)][-len(paths) :]
    assert len(paths) >= 4 and paths[-1] == "/session/s1/page?n=5"
