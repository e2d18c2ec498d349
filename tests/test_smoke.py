import aiohttp
from aiohttp import web


async def test_proxies_a_session_through_the_routes_api(edge, serve):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"host={request.headers['Host']}")

    upstream_app = web.Application()
    upstream_app.router.add_get("/hi", hello)
    upstream = await serve(upstream_app)
    server = await edge()
    async with aiohttp.ClientSession() as client:
        async with client.post(server.url("/api/routes/s1"), json={"target": upstream.origin}) as resp:
            assert resp.status == 201
        async with client.get(server.url("/session/s1/hi")) as resp:
            assert resp.status == 200
            assert await resp.text() == f"host=127.0.0.1:{upstream.port}"
            assert resp.headers["X-Edge-Session"] == "s1"
