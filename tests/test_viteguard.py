"""The Vite guard (edge/viteguard.py) against the pinned Astro's real Vite dev server.

The payloads are those of Vite's 2025 file-read advisories (CVE-2025-30208,
-31125, -31486, -32395, -46565). Each is sent through the edge, on both request
paths and by prefix and cookie: the edge answers 403 and the secret never
appears. What Astro's own pages need from ``/@fs/`` still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from edge import keys
from edge.server import PR_GET_DUMPABLE, PR_SET_DUMPABLE, serve
from edge.viteguard import refusal
from tests.conftest import free_port
from tests.support.polling import answers, wait_until
from tests.support.rawhttp import closed_by_peer, open_raw
from tests.support.routes import add_route

SECRET = "top-secret-7f3a"


def payloads(site: Path, secret: Path) -> list[str]:
    """Request targets (as the dev server would see them) from the advisories, and close variants."""
    return [
        f"/@fs{secret}",  # plain: outside the project
        "/@fs/etc/passwd",
        f"/@fs{secret}?raw??",  # CVE-2025-30208
        f"/@fs{secret}?import&raw??",
        f"/@fs{secret}?import&?inline=1.wasm?init",  # CVE-2025-31125
        f"/@fs{secret}?raw?import",
        f"/@fs{secret}?import&?raw",
        f"/@fs{secret}?.svg?.wasm?init",  # CVE-2025-31486
        f"/@fs{site}/?/../../{secret.name}?import&?raw",
        f"/@fs{site}/%2e%2e/{secret.name}",
        f"/@fs{site}/../{secret.name}",
        f"/@fs{site}/#/../../{secret.name}",  # CVE-2025-32395 (a '#' in the request target)
        "/.env",  # CVE-2025-46565 and Vite's default deny list
        "/.env/.",
        "/.env/",
        "/.env?raw",
        "/%2eenv",
        "/src/.env.local?raw",
        "/cert.pem?raw",
        f"/@fs{site}/.env",
    ]


def test_refusal_keeps_what_astro_and_vite_send():
    root = Path("/srv/site")
    for target in (
        "/",
        "/?token=abc",
        "/@vite/client",
        "/node_modules/.vite/deps/astro.js?v=12ab",
        "/src/pages/index.astro?astro&type=style&index=0&lang.css",
        "/@id/astro:scripts/page.js",
        "/@fs/srv/site/node_modules/astro/dist/runtime/client/dev-toolbar/entrypoint.js?v=1",
        "/.well-known/appspecific/com.chrome.devtools.json",
        "/caf%C3%A9",
        "/login?next=/a?b=1",
        "/a/../b/./c",
    ):
        assert refusal(target, root) is None, target


@pytest.fixture
async def guarded_preview(astro_site, astro_dev, edge, tmp_path):
    """A real Astro 5 dev server with a secret beside the project and a .env inside it, routed as ``s1``."""
    site = astro_site("5")
    (site.path / ".env").write_text(f"SECRET={SECRET}\n")
    (site.path / "cert.pem").write_text(SECRET)
    (site.path / "src" / ".env.local").write_text(SECRET)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    origin = await astro_dev(site)
    server = await edge()
    add_route(server, "s1", origin, root=site.path)
    return server, site, secret


@pytest.mark.astro
@pytest.mark.both_paths
async def test_the_advisories_payloads_are_refused_and_astro_still_works(guarded_preview):
    server, site, secret = guarded_preview
    async with aiohttp.ClientSession() as client:
        # What Astro needs: its page, and a /@fs/ file inside the project's node_modules.
        async with client.get(server.url("/session/s1/")) as resp:
            assert resp.status == 200 and "<html" in (await resp.text()).lower()
        inside = f"/@fs{site.path}/node_modules/astro/package.json"
        async with client.get(server.url(inside), headers={"Cookie": "edge_session=s1"}) as resp:
            assert resp.status == 200 and '"name": "astro"' in await resp.text()
    for target in payloads(site.path, secret):
        for raw_target, cookie in ((f"/session/s1{target}", ""), (target, "Cookie: edge_session=s1\r\n")):
            reader, writer = await open_raw(server.port)
            writer.write(f"GET {raw_target} HTTP/1.1\r\nHost: localhost\r\n{cookie}Connection: close\r\n\r\n".encode())
            answer = await closed_by_peer(reader)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 403 "), (raw_target, answer[:200])
            assert SECRET.encode() not in answer


@pytest.mark.astro
async def test_without_the_guard_the_pinned_vite_refuses_the_plain_read_itself(guarded_preview):
    """A control: the secret is really there and really outside Vite's allow list (Vite answers 403 too)."""
    server, site, secret = guarded_preview
    origin = str(server.app[keys.SESSIONS].get("s1").target)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{origin}/@fs{secret}") as resp:
            assert resp.status == 403
            assert SECRET not in await resp.text()


async def test_the_edge_process_is_not_dumpable(settings):
    """``serve`` makes its process non-dumpable: same-uid dev servers cannot read its /proc/<pid>/environ."""
    libc = ctypes.CDLL(None)
    port = free_port()
    task = asyncio.create_task(serve(replace(settings, port=port)))
    try:
        async with aiohttp.ClientSession() as client:
            await wait_until(lambda: answers(client, f"http://127.0.0.1:{port}/health"), "/health to answer", 30)
        running = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    assert running == 0
