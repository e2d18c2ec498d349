"""Which event loop serves: uvloop by default, asyncio's own as the fallback (``EDGE_EVENT_LOOP``).

The relay and the fast path spend most of their Python time in the event
loop's per-read and per-write machinery; uvloop (libuv, the loop uvicorn
uses) does that in C. ``edge serve`` and each worker process run on the loop
:func:`run` picks: the one named by the setting, or asyncio's when uvloop is
not importable (a platform without its wheels), with one warning saying so.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine, TypeVar

log = logging.getLogger(__name__)

UVLOOP, ASYNCIO = "uvloop", "asyncio"
LOOPS = (UVLOOP, ASYNCIO)
T = TypeVar("T")


def loop_factory(name: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The loop that ``name`` gets here and how to make one: uvloop's falls back to asyncio's when missing."""
    if name == UVLOOP:
        try:
            import uvloop
        except ImportError:
            log.warning("EDGE_EVENT_LOOP=uvloop but uvloop is not installed: serving on asyncio's event loop")
        else:
            return UVLOOP, uvloop.new_event_loop
    return ASYNCIO, asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """``asyncio.run(main)`` on the event loop ``name`` (see :func:`loop_factory`)."""
    kind, factory = loop_factory(name)
    if kind == ASYNCIO:
        return asyncio.run(main)  # exactly as before uvloop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop() -> str:
    """The kind of event loop running now (``uvloop`` or ``asyncio``), for the startup log and health."""
    loop = asyncio.get_running_loop()
    return UVLOOP if type(loop).__module__.startswith("uvloop") else ASYNCIO
