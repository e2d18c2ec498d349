"""Blocking calls (boto3) off the event loop, in threads that never delay the process's exit.

``asyncio.to_thread`` uses the loop's default pool, whose threads ``asyncio.run`` and the
interpreter wait for at exit: one Converse call hung on a dead connection kept a stopped
edge alive until botocore's read timeout. A daemon thread per call is abandoned instead;
cancelling the awaiting task returns at once (the call itself ends at its own timeout).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, TypeVar

T = TypeVar("T")


async def call_in_daemon_thread(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` in a new daemon thread; its result or exception, or CancelledError at once."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value) -> None:
        if future.done():  # cancelled: nobody waits for this call any more
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            ok, value = True, fn(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            ok, value = False, exc
        try:
            loop.call_soon_threadsafe(settle, ok, value)
        except RuntimeError:  # the loop is closed: the edge has stopped
            pass

    threading.Thread(target=work, name=f"call-{getattr(fn, '__name__', 'blocking')}", daemon=True).start()
    return await future
