import aiohttp
from aiohttp import web

from tests.support.routes import post_route
from tests.support.upstreams import app_with


async def test_proxies_a_session_through_the_routes_api(edge, serve):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"host={request.headers['Host']}")

    upstream = await serve(app_with({"GET /hi": hello}))
    server = await edge()
    async with aiohttp.ClientSession() as client:
        await post_route(server.origin, "s1", upstream.origin, client=client)
        async with client.get(server.url("/session/s1/hi")) as resp:
            assert resp.status == 200
            assert await resp.text() == f"host=127.0.0.1:{upstream.port}"
            assert resp.headers["X-Edge-Session"] == "s1"
