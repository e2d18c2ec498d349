"""Wait until a condition holds, with a deadline and a failure message that says what was awaited.

Tests never sleep for a fixed time: they poll what they expect (a record
landing, a process leaving, a state changing) and fail clearly when it does
not come.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp

T = TypeVar("T")


def _failure(what: str, timeout: float, detail: Callable[[], object] | None) -> AssertionError:
    message = f"timed out after {timeout:g}s waiting for {what}"
    if detail is not None:
        message += f"; {detail()}"
    return AssertionError(message)


async def wait_until(
    condition: Callable[[], T | Awaitable[T]],
    what: str,
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``condition`` (plain or async) until it returns something truthy, and return that.

    On timeout raise an AssertionError naming ``what`` and, when given,
    ``detail()`` (the last state seen, a log tail), so the failure explains itself.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value: Any = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise _failure(what, timeout, detail)
        await asyncio.sleep(interval)


def wait_until_blocking(
    condition: Callable[[], T],
    what: str,
    timeout: float = 10.0,
    *,
    interval: float = 0.1,
    detail: Callable[[], object] | None = None,
) -> T:
    """:func:`wait_until` for code that runs outside an event loop (a thread, a synchronous test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _failure(what, timeout, detail)
        time.sleep(interval)


async def answers(client: aiohttp.ClientSession, url: str, status: int = 200) -> bool:
    """Whether ``url`` answers ``status`` now; False while nothing listens there yet (a server starting)."""
    try:
        async with client.get(url) as resp:
            await resp.read()
            return resp.status == status
    except aiohttp.ClientConnectionError:
        return False
