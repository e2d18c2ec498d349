"""The edge's own paths, in one table: every path set the edge uses derives from it.

A path here is never proxied by the session cookie (a preview cannot shadow
the API), and its row says who may call it (:mod:`edge.auth`), whether it
answers any ``Host`` (load balancers' health checks), whether it counts as
activity for idle shutdown (:mod:`edge.idle`) and how :mod:`edge.metrics`
classes it. ``/session`` is the prefix namespace: reserved from cookie
routing, its paths belong to the previews.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Access(str, Enum):
    OPEN = "open"  # anyone (health checks, the operator login form, previews)
    TOKEN = "token"  # Authorization: Bearer <EDGE_API_TOKEN>
    OPERATOR = "operator"  # the token, or the operator cookie on a navigation (edge.auth)


class Reserved(NamedTuple):
    path: str
    subtree: bool  # also every path below it (``/api`` → ``/api/...``)
    access: Access
    any_host: bool = False  # answered whatever the Host (GET and HEAD only)
    activity: bool = True  # a request keeps the edge from idle shutdown
    metric: str = "other"  # edge_requests_total's route label
    own: bool = True  # the edge answers it (False: the previews' namespace)


TABLE: tuple[Reserved, ...] = (
    Reserved("/health", False, Access.OPEN, any_host=True, activity=False, metric="health"),
    Reserved("/api/health", False, Access.OPEN, any_host=True, activity=False, metric="health"),
    Reserved("/metrics", False, Access.TOKEN, activity=False, metric="metrics"),
    Reserved("/api", True, Access.TOKEN, metric="api"),
    Reserved("/_edge/login", False, Access.OPEN),
    Reserved("/_edge", True, Access.OPERATOR),
    Reserved("/session/_edge", True, Access.OPEN, metric="preview"),  # the waiting page's status
    Reserved("/session", True, Access.OPEN, own=False),
)

_EXACT = {row.path: row for row in TABLE}
_SUBTREES = tuple(row for row in TABLE if row.subtree)


def lookup(path: str) -> Reserved | None:
    """The row of a request path (exact rows first), or None when the path is not the edge's."""
    row = _EXACT.get(path)
    if row is not None:
        return row
    for row in _SUBTREES:
        if path.startswith(row.path) and path[len(row.path) : len(row.path) + 1] == "/":
            return row
    return None


def paths(**where: object) -> frozenset[str]:
    """The exact paths of the rows matching ``where`` (e.g. ``any_host=True``)."""
    return frozenset(row.path for row in TABLE if not row.subtree and all(getattr(row, k) == v for k, v in where.items()))


def protected(path: str) -> bool:
    """Whether a path needs the API token (or, for the operator page, its cookie)."""
    row = lookup(path)
    return row is not None and row.access is not Access.OPEN
