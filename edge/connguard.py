"""Who may hold a client connection: the connection cap, the per-client limit, eviction,
the health-check reserve and the request-body deadline (one :class:`ConnectionGuard` per
listening site; :mod:`edge.limits` and :mod:`edge.fastpath` report their connections to it)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from edge import reserved
from edge.headers import is_trusted

if TYPE_CHECKING:
    from edge.settings import Settings

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL = 60.0


def peer_address(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    return peername[0] if isinstance(peername, (list, tuple)) and peername else ""


class RateLimitedLog:
    """At most ``burst`` lines per ``interval`` seconds; the next line says how many were left out."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, burst: int = 5) -> None:
        self._log = logger
        self._interval = interval
        self._burst = burst
        self._window = -interval
        self._count = 0
        self._skipped = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= self._interval:
            self._window, self._count = now, 0
        if self._count >= self._burst:
            self._skipped += 1
            return
        self._count += 1
        if self._skipped:
            message += " (%d similar lines left out)"
            args = (*args, self._skipped)
            self._skipped = 0
        self._log.warning(message, *args)


class GuardedConnection(Protocol):
    """What the guard needs of a connection (:class:`EdgeProtocol` and :class:`edge.fastpath.FrontProtocol`)."""

    def waiting_for_head(self) -> bool: ...

    def receiving(self) -> bool: ...

    def body_stalled(self) -> bool: ...

    def force_close(self) -> None: ...


@dataclass(slots=True)
class Slot:
    """What the guard knows of one connection."""

    client: str  # the client's address (after trusted-proxy resolution, once a head said)
    last_read: float  # when the client last sent a byte (time.monotonic)
    reserve: bool = False  # admitted past the cap: only a health check is answered on it


class Admission(Enum):
    REFUSED = 0
    ADMITTED = 1
    RESERVE = 2  # at the cap with no connection to evict: for a load balancer's health check only


# Connections past the cap kept for health checks (each lives one health check at most).
HEALTH_RESERVE = 4
# Health checks (edge.reserved's any-host paths), the only requests answered on a reserve connection.
HEALTH_REQUESTS = tuple(
    f"{method} {path}{end}".encode() for method in ("GET", "HEAD") for path in sorted(reserved.paths(any_host=True)) for end in " ?"
)


class ConnectionGuard:
    """The open client connections of one listening site, and the limits on them.

    * at most ``max_connections``: at the cap a new connection makes room by
      closing the one that least looks like a working client: one waiting for
      a request head first, then one that is sending the server something (a
      head, a body, a WebSocket) from the client with the most connections,
      the one that sent nothing for longest first. Connections waiting for the
      upstream or reading a response are never closed to make room.
    * at most ``per_client`` connections from one client address (the address a
      trusted proxy names in ``X-Forwarded-For`` once a request head says it).
    * with nothing to close, a few reserve connections still answer health
      checks, so a load balancer never sees the edge as dead while one client
      holds the cap; anything else on them gets 503.
    * a request body that sends nothing for ``body_timeout`` seconds ends its connection.
    """

    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        *,
        per_client: int = 0,
        body_timeout: float = 0.0,
        trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
    ) -> None:
        self.max_connections = max_connections  # 0: no cap
        self.header_timeout = header_timeout  # 0: no deadline
        self.per_client = per_client  # 0: no limit
        self.body_timeout = body_timeout  # 0: no deadline
        self.trusted = trusted
        self.refused = 0
        self.evicted = 0
        self._open: dict[GuardedConnection, Slot] = {}
        self._clients: Counter[str] = Counter()
        self._reserved = 0
        self._warned_at = -REFUSAL_LOG_INTERVAL
        self.bad_requests = RateLimitedLog(log)  # one line per bad request, a few per interval at most
        self._clock = time.monotonic

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionGuard:
        return cls(
            settings.max_connections,
            settings.header_timeout,
            per_client=settings.max_connections_per_client,
            body_timeout=settings.body_timeout,
            trusted=settings.trusted_proxies,
        )

    def admit(self, protocol: GuardedConnection, address: str) -> Admission:
        """Count a new connection from ``address`` in, making room if the cap is reached."""
        if self.per_client and self._clients[address] >= self.per_client and not is_trusted(address, self.trusted):
            self._refuse(f"{address} has {self.per_client} connections (EDGE_MAX_CONNECTIONS_PER_CLIENT)")
            return Admission.REFUSED
        admission = Admission.ADMITTED
        if self.max_connections and len(self._open) - self._reserved >= self.max_connections and not self._evict():
            if self._reserved >= HEALTH_RESERVE:
                self._refuse(f"all {len(self._open)} client connections are busy (EDGE_MAX_CONNECTIONS)")
                return Admission.REFUSED
            admission = Admission.RESERVE
            self._reserved += 1
        self._open[protocol] = Slot(address, self._clock(), admission is Admission.RESERVE)
        self._clients[address] += 1
        return admission

    def release(self, protocol: GuardedConnection) -> None:
        slot = self._open.pop(protocol, None)
        if slot is None:
            return
        self._uncount(slot.client)
        if slot.reserve:
            self._reserved -= 1

    def read(self, protocol: GuardedConnection) -> None:
        """The client sent bytes on this connection."""
        slot = self._open.get(protocol)
        if slot is not None:
            slot.last_read = self._clock()

    def slot(self, protocol: GuardedConnection) -> Slot | None:
        """What the guard keeps of a connection, for one that records its reads itself (an upgraded WebSocket:
        ``slot.last_read = time.monotonic()`` per read, without :meth:`read`'s lookup)."""
        return self._open.get(protocol)

    def attribute(self, protocol: GuardedConnection, client: str) -> bool:
        """A request head named the client behind a trusted proxy; False when that client is over its limit."""
        slot = self._open.get(protocol)
        if slot is None or slot.client == client:
            return True
        self._uncount(slot.client)
        slot.client = client
        self._clients[client] += 1
        if self.per_client and self._clients[client] > self.per_client and not is_trusted(client, self.trusted):
            self._refuse(f"{client} has {self.per_client} connections (EDGE_MAX_CONNECTIONS_PER_CLIENT)")
            return False
        return True

    def _uncount(self, client: str) -> None:
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]

    def _evict(self) -> bool:
        """Close the connection that least looks like a working client (see the class); False if none may go."""
        victim: GuardedConnection | None = None
        best: tuple[bool, int, float] | None = None
        for protocol, slot in self._open.items():
            if slot.reserve:
                continue
            idle = protocol.waiting_for_head()
            if not idle and not protocol.receiving():
                continue
            key = (not idle, -self._clients[slot.client], slot.last_read)
            if best is None or key < best:
                victim, best = protocol, key
        if victim is None:
            return False
        self.release(victim)
        self.evicted += 1
        victim.force_close()
        return True

    def check_bodies(self) -> None:
        """Close connections whose request body sent nothing for ``body_timeout`` seconds."""
        deadline = self._clock() - self.body_timeout
        for protocol, slot in list(self._open.items()):
            if slot.last_read < deadline and protocol.body_stalled():
                log.info("closing a connection from %s: its request body sent nothing for %gs (EDGE_BODY_TIMEOUT)", slot.client, self.body_timeout)
                self.release(protocol)
                protocol.force_close()

    async def sweep(self) -> None:
        """Run :meth:`check_bodies` a few times per ``body_timeout`` (a task of the listening site)."""
        interval = max(0.05, min(1.0, self.body_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.check_bodies()

    def _refuse(self, why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= REFUSAL_LOG_INTERVAL:
            self._warned_at = now
            log.warning("refusing new connections: %s (%d refused so far)", why, self.refused)


def is_health_check(head: bytes) -> bool | None:
    """Whether a head's first bytes are a health check; None while too few have arrived to say."""
    for start in HEALTH_REQUESTS:
        if head.startswith(start):
            return True
        if start.startswith(bytes(head)):
            return None
    return False
