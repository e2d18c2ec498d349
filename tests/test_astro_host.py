"""The reason the edge exists, shown on real Astro 5 and Astro 7 dev servers.

Vite refuses a request whose ``Host`` is the public preview name (DNS-rebinding
protection). Through the edge the same request is served: the edge checks the
host against its own allowlist and rewrites ``Host`` for the upstream. The
page's root-absolute subresources and Vite's HMR socket reach the same dev
server through the edge's session cookie.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import aiohttp
import pytest

from tests.chromium import PUBLIC_HOST
from tests.conftest import RunningServer
from tests.fixtures_astro import AstroSite
from tests.fixtures_browser import WatchedPage
from tests.support.polling import wait_until
from tests.support.routes import post_route

pytestmark = pytest.mark.astro

API_TOKEN = "astro-host-test-token"
HMR_DEADLINE_MS = 30_000
_WS_TOKEN = re.compile(r"""wsToken\s*=\s*("(?:[^"\\]|\\.)*")""")


@dataclass
class Preview:
    """One Astro dev server with one edge route pointing at it."""

    site: AstroSite
    astro_origin: str
    edge: RunningServer
    session_id: str

    @property
    def public_host(self) -> str:
        """The Host a browser sends for the public name on the edge's test port."""
        return f"{PUBLIC_HOST}:{self.edge.port}"

    @property
    def public_url(self) -> str:
        return f"http://{self.public_host}/session/{self.session_id}/"


@pytest.fixture(params=["5", "7"], ids=["astro5", "astro7"])
async def preview(request, shared_astro_dev, edge) -> Preview:
    """A real ``astro dev`` (shared, read-only) for Astro 5 or 7, and a real edge routing a session to it."""
    site, origin = await shared_astro_dev(request.param)
    server = await edge(api_token=API_TOKEN)
    session_id = f"astro{request.param}-thread"
    await post_route(server.origin, session_id, origin, token=API_TOKEN)
    return Preview(site, origin, server, session_id)


@pytest.fixture(params=["5", "7"], ids=["astro5", "astro7"])
async def own_preview(request, astro_site, astro_dev, edge) -> Preview:
    """Like ``preview``, but with this test's own site and dev server, so it may edit files."""
    site = astro_site(request.param)
    origin = await astro_dev(site)
    server = await edge(api_token=API_TOKEN)
    session_id = f"astro{request.param}-own"
    await post_route(server.origin, session_id, origin, token=API_TOKEN)
    return Preview(site, origin, server, session_id)


def ws_token(client_source: str) -> str:
    """The HMR token Vite writes into ``/@vite/client`` (a JSON string literal)."""
    found = _WS_TOKEN.search(client_source)
    assert found, "no wsToken in /@vite/client"
    return json.loads(found.group(1))


async def test_vite_refuses_the_public_host_when_asked_directly(preview: Preview) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(preview.astro_origin + "/", headers={"Host": PUBLIC_HOST}) as resp:
            body = await resp.text()
    assert resp.status == 403
    assert f'Blocked request. This host ("{PUBLIC_HOST}") is not allowed.' in body


async def test_the_edge_serves_the_page_for_the_public_host(preview: Preview) -> None:
    async with aiohttp.ClientSession() as client:
        url = preview.edge.url(f"/session/{preview.session_id}/")
        async with client.get(url, headers={"Host": preview.public_host}) as resp:
            body = await resp.text()
            cookie = resp.cookies.get("edge_session")
    assert resp.status == 200, body
    assert resp.content_type == "text/html"
    assert "Welcome to Amelia&#39;s site" in body or "Welcome to Amelia's site" in body
    assert '<script type="module" src="/@vite/client"></script>' in body
    assert cookie is not None and cookie.value == preview.session_id


async def test_root_absolute_subresources_reach_the_session_by_cookie(preview: Preview) -> None:
    headers = {"Host": preview.public_host, "Cookie": f"edge_session={preview.session_id}"}
    async with aiohttp.ClientSession() as client:
        async with client.get(preview.edge.url("/@vite/client"), headers=headers) as resp:
            source = await resp.text()
            assert resp.status == 200
            assert resp.content_type in ("text/javascript", "application/javascript")
            assert "wsToken" in source
        async with client.get(preview.edge.url("/logo.svg"), headers=headers) as resp:
            assert resp.status == 200
            assert resp.content_type == "image/svg+xml"
        async with client.get(preview.edge.url("/src/styles/global.css"), headers=headers) as resp:
            assert resp.status == 200
            assert "rgb(1, 2, 3)" in await resp.text()
        # Without the cookie the same path belongs to no session.
        async with client.get(preview.edge.url("/@vite/client"), headers={"Host": preview.public_host}) as resp:
            assert resp.status == 404


async def test_the_hmr_socket_opens_through_the_edge(preview: Preview) -> None:
    headers = {"Host": preview.public_host, "Cookie": f"edge_session={preview.session_id}"}
    async with aiohttp.ClientSession() as client:
        async with client.get(preview.edge.url("/@vite/client"), headers=headers) as resp:
            token = ws_token(await resp.text())
        async with client.ws_connect(
            preview.edge.url(f"/?token={token}"),
            protocols=("vite-hmr",),
            headers={**headers, "Origin": f"http://{preview.public_host}"},
            timeout=aiohttp.ClientWSTimeout(ws_receive=30),
        ) as ws:
            assert ws.protocol == "vite-hmr"
            message = await ws.receive_json(timeout=30)
    assert message == {"type": "connected"}


@pytest.mark.browser
async def test_chromium_previews_edits_live_and_follows_root_links(own_preview: Preview, page: WatchedPage) -> None:
    preview = own_preview
    browser_page = page.page
    await browser_page.goto(preview.public_url, wait_until="load")
    # Vite logs this once its HMR socket has received {"type": "connected"}.
    await wait_until(lambda: any("[vite] connected" in m for m in page.console_messages), "the HMR socket to connect", HMR_DEADLINE_MS / 1000)

    # The edge gave the page's URLs the prefix (edge/prefixing.py): Vite's client and its HMR socket live under it.
    sockets = [ws for ws in page.websockets if "?token=" in ws.url]
    assert sockets and sockets[0].url.startswith(f"ws://{preview.public_host}/session/{preview.session_id}/?token=")
    assert not sockets[0].is_closed()
    statuses = {r.url: r.status for r in page.responses}
    assert f"http://{preview.public_host}/session/{preview.session_id}/@vite/client" in statuses
    assert all(200 <= status < 300 or status == 304 for status in statuses.values()), statuses
    assert page.problems() == []

    # The island's script runs (it was fetched root-absolute through the edge).
    await browser_page.click("#counter-button")
    assert await browser_page.text_content("#counter-value") == "1"

    # Edit the stylesheet on disk: Vite's HMR message reaches the open page through the edge.
    h1_color = "() => getComputedStyle(document.querySelector('h1')).color"
    assert await browser_page.evaluate(h1_color) == "rgb(1, 2, 3)"
    await browser_page.evaluate("() => { window.__beforeEdit = true; }")
    css = preview.site.path / "src" / "styles" / "global.css"
    if preview.site.version == "5":
        # Astro 5 itself answers an edit of frontmatter-imported CSS with a
        # full reload (its SSR graph holds `global.css?inline`); Astro 7 does not.
        async with browser_page.expect_navigation(timeout=HMR_DEADLINE_MS):
            css.write_text(css.read_text().replace("rgb(1, 2, 3)", "rgb(200, 30, 40)"))
    else:
        css.write_text(css.read_text().replace("rgb(1, 2, 3)", "rgb(200, 30, 40)"))
    await browser_page.wait_for_function(f"() => ({h1_color})() === 'rgb(200, 30, 40)'", timeout=HMR_DEADLINE_MS)
    reloaded = await browser_page.evaluate("() => window.__beforeEdit") is None
    assert reloaded is (preview.site.version == "5")

    # A root-absolute link lands on the same session's page.
    page.clear()
    await browser_page.click("#about-link")
    await browser_page.wait_for_url(f"http://{preview.public_host}/session/{preview.session_id}/about")
    assert await browser_page.text_content("h1") == "About Amelia"
    assert page.problems() == []
