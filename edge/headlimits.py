"""The limits on a request head, one definition for every path.

aiohttp's parser enforces them on its path; the fast path checks the same
numbers on the whole head however it arrived, and hands over what exceeds
them, so both answer the same 400.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeadLimits:
    """The limits on a request head, the same on every path (:mod:`edge.fastpath` hands over what exceeds them)."""

    max_line_size: int = 8190  # the request target (aiohttp's default)
    max_field_size: int = 8190  # one header's name and value together (aiohttp's default)
    max_headers: int = 128  # header fields (aiohttp's default)
    max_head: int = 16 * 1024  # the whole head, request line to blank line


HEAD_LIMITS = HeadLimits()
