"""A preview's output: the last lines in memory, everything in a log file.

The dev server's pipe is drained all the time (a full pipe would freeze the
server), so lines land here; followers (``/api/astro/logs?follow=1``) get new
lines through small bounded queues that drop on overflow rather than block.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from pathlib import Path
from typing import AsyncIterator, TextIO

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
MAX_LINE = 4000
ROTATE_BYTES = 2 * 1024 * 1024
_CLOSED = object()


def clean_line(raw: str) -> str:
    """A printable line: colour codes and carriage-return redraws removed."""
    text = _ANSI.sub("", raw).rstrip("\r\n")
    if "\r" in text:
        text = text.rsplit("\r", 1)[-1]
    return text[:MAX_LINE]


class LogTail:
    """The bounded ring buffer plus log file of one preview."""

    def __init__(self, path: Path, max_lines: int = 400) -> None:
        self.path = path
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._file: TextIO | None = None
        self._followers: set[asyncio.Queue] = set()
        self._partial = ""
        self.count = 0  # lines written so far, to find the lines of one run

    def _open(self) -> TextIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size > ROTATE_BYTES:
                self.path.replace(self.path.with_suffix(self.path.suffix + ".1"))
            self._file = self.path.open("a", encoding="utf-8", buffering=1)
        return self._file

    def feed(self, chunk: bytes) -> None:
        """Add raw process output; complete lines are recorded."""
        text = self._partial + chunk.decode("utf-8", "replace")
        *lines, self._partial = text.split("\n")
        if len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            self.write(line)

    def flush_partial(self) -> None:
        if self._partial:
            self.write(self._partial)
            self._partial = ""

    def write(self, raw: str) -> None:
        line = clean_line(raw)
        self._lines.append(line)
        self.count += 1
        try:
            self._open().write(line + "\n")
        except OSError:
            pass  # a full disk must not stop the preview; the ring buffer still has the line
        for queue in list(self._followers):
            if queue.full():
                continue
            queue.put_nowait(line)

    def event(self, message: str) -> None:
        """A line from the supervisor itself (start, stop, crash), marked as such."""
        self.write(f"[edge {time.strftime('%H:%M:%S')}] {message}")

    def tail(self, count: int = 40) -> list[str]:
        return list(self._lines)[-count:] if count > 0 else []

    def since(self, mark: int, count: int = 40) -> list[str]:
        """The last ``count`` lines written after line number ``mark``."""
        fresh = min(self.count - mark, len(self._lines))
        return self.tail(min(fresh, count))

    def text(self, count: int = 40) -> str:
        return "\n".join(self.tail(count))

    async def follow(self, backlog: int = 100) -> AsyncIterator[str]:
        """The last ``backlog`` lines, then new lines until :meth:`close`."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        self._followers.add(queue)
        try:
            for line in self.tail(backlog):
                yield line
            while True:
                item = await queue.get()
                if item is _CLOSED:
                    return
                yield item
        finally:
            self._followers.discard(queue)

    def close(self) -> None:
        """End followers and close the file (the edge is stopping)."""
        self.flush_partial()
        for queue in list(self._followers):
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(_CLOSED)
        if self._file is not None:
            self._file.close()
            self._file = None
