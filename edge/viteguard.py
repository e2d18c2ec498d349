"""What a dev server is never asked: file reads outside its project, and Vite's known bypasses.

A preview's dev server is Vite, exposed through the edge to anyone with the
link. Vite's own ``server.fs`` checks have been bypassed again and again
(2025: CVE-2025-30208 ``?raw??`` and ``?import&raw??``; CVE-2025-31125
``?inline``/``?raw?import`` with ``.wasm?init``; CVE-2025-31486 ``?.svg`` and
``?/../`` relative paths; CVE-2025-32395 a ``#`` in the request target;
CVE-2025-46565 ``/.`` after a denied file). The edge refuses, with 403 and
before the dev server sees them, the shapes those bypasses need and no page
or Vite client ever sends:

* a ``#`` or a backslash in the request target;
* a second ``?`` in a query that names Vite's transforms or a path
  (``?raw??``, ``?import&raw??``, ``?raw?import``, ``?.svg?.wasm?init``,
  ``?/../``);
* path segments naming secrets Vite denies by default (``.env*``, ``.git``,
  ``*.pem``, ``*.crt``), also percent-encoded and with anything after them
  (``/.env/.``);
* ``/@fs/<path>`` outside the project's folder (its ``node_modules`` included,
  wherever a link points; ``..`` and ``%2e%2e`` resolved) when the route
  knows the folder.

Dot segments elsewhere pass byte-identical, as every other path does.

:func:`needs_check` is the cheap test the fast path uses to leave a request
to aiohttp's path, which alone judges (:func:`refusal`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

FS_PREFIX = "/@fs/"
# Query parameters that make Vite transform a file (the 2025 bypasses add a second '?' to them).
VITE_PARAMS = frozenset({"raw", "import", "inline", "url", "worker", "sharedworker", "init"})
# Vite's default server.fs.deny patterns, as segment tests.
_SECRET_PREFIXES = (".env", ".git")
_SECRET_SUFFIXES = (".pem", ".crt")


def needs_check(raw_target: str) -> bool:
    """Whether a request target could be refused (a few substring tests; most targets are not)."""
    path, _, query = raw_target.partition("?")
    return (
        "/." in path
        or "%" in path
        or "\\" in raw_target
        or "#" in raw_target
        or "?" in query
        or path.startswith(FS_PREFIX)
        or ".pem" in path
        or ".crt" in path
    )


def refusal(raw_target: str, root: Path | None) -> str | None:
    """Why the dev server must not get ``raw_target`` (the target it would see), or None."""
    if not needs_check(raw_target):
        return None
    if "#" in raw_target or "\\" in raw_target:
        return "A '#' or '\\' in the request target is not accepted."
    raw_path, _, query = raw_target.partition("?")
    if "?" in query and _vite_query(query):
        return "A second '?' with Vite's query parameters is not accepted."
    path = unquote(raw_path)
    if "\\" in path or "\x00" in path:
        return "An encoded '\\' or NUL in the path is not accepted."
    for segment in path.split("/"):
        if segment.startswith(_SECRET_PREFIXES) or segment.endswith(_SECRET_SUFFIXES):
            return "This file is not served."
    if path.startswith(FS_PREFIX) and root is not None and not _inside(path[len(FS_PREFIX) - 1 :], root):
        return "Files outside the project are not served."
    return None


def _vite_query(query: str) -> bool:
    """Whether a query names one of Vite's transforms (``raw``, ``import``, ``inline``, ``url``,
    ``worker``, ``init``, a ``.wasm``/``.svg`` suffix) or a path (``?/../``): what the bypasses combine
    with a second ``?``. A plain second ``?`` (``?to=/next?x=1``) is an ordinary query."""
    for piece in query.replace("?", "&").split("&"):
        name = unquote(piece.partition("=")[0]).lower()
        if name in VITE_PARAMS or name.endswith((".wasm", ".svg")) or name.startswith(("/", ".")):
            return True
    return False


def _inside(file: str, root: Path) -> bool:
    """Whether an absolute ``/@fs/`` path lies in ``root`` or in the ``node_modules`` it uses."""
    allowed = [os.path.realpath(root)]
    modules = root / "node_modules"
    if modules.is_symlink():
        allowed.append(os.path.realpath(modules))
    real = os.path.realpath(file)
    return any(real == base or real.startswith(base.rstrip("/") + "/") for base in allowed)
