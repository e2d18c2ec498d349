"""Ports for dev servers: a pool from ASTRO_PORT upward, skipping ports in use."""

from __future__ import annotations

import socket


class NoFreePort(RuntimeError):
    """Every port in the pool is taken."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` right now.

    SO_REUSEADDR as Node sets it: connections of a stopped server lingering in
    TIME_WAIT do not make its port unusable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortPool:
    """Hands out ports ``base``, ``base+1``, … that no preview holds and nothing listens on."""

    def __init__(self, base: int, size: int = 200) -> None:
        self.base = base
        self.size = size
        self._held: set[int] = set()

    def acquire(self) -> int:
        for port in range(self.base, min(self.base + self.size, 65536)):
            if port not in self._held and port_is_free(port):
                self._held.add(port)
                return port
        raise NoFreePort(f"no free port in {self.base}-{self.base + self.size - 1} (ASTRO_PORT)")

    def release(self, port: int | None) -> None:
        if port is not None:
            self._held.discard(port)

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)
