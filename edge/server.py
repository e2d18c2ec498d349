"""Running the edge: the listening socket and the server's own limits."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from edge.app import create_app
from edge.settings import Settings

log = logging.getLogger("edge")


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT."""
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    log.info("edge listening on http://%s:%d (workspace %s)", settings.host, settings.port, settings.workspace_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
