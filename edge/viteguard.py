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
* a ``?`` inside the query (a second ``?``: ``?raw??``, ``?raw?import``,
  ``?.svg?.wasm?init``, ``?/../``);
* ``.`` or ``..`` segments, also percent-encoded (browsers remove them);
* segments naming secrets Vite denies by default (``.env*``, ``.git``,
  ``*.pem``, ``*.crt``);
* ``/@fs/<path>`` outside the project's folder (its ``node_modules`` included,
  wherever a link points) when the route knows the folder.

:func:`needs_check` is the cheap test the fast path uses to leave a request
to aiohttp's path, which alone judges (:func:`refusal`).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote

FS_PREFIX = "/@fs/"
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
        or path.endswith((".pem", ".crt"))
    )


def refusal(raw_target: str, root: Path | None) -> str | None:
    """Why the dev server must not get ``raw_target`` (the target it would see), or None."""
    if not needs_check(raw_target):
        return None
    if "#" in raw_target or "\\" in raw_target:
        return "A '#' or '\\' in the request target is not accepted."
    raw_path, _, query = raw_target.partition("?")
    if "?" in query:
        return "A second '?' in the request target is not accepted."
    path = unquote(raw_path)
    if "\\" in path or "\x00" in path:
        return "An encoded '\\' or NUL in the path is not accepted."
    for segment in path.split("/"):
        if segment in (".", ".."):
            return "Dot segments in the path are not accepted."
        if segment.startswith(_SECRET_PREFIXES) or segment.endswith(_SECRET_SUFFIXES):
            return "This file is not served."
    if path.startswith(FS_PREFIX) and root is not None and not _inside(path[len(FS_PREFIX) - 1 :], root):
        return "Files outside the project are not served."
    return None


def _inside(file: str, root: Path) -> bool:
    """Whether an absolute ``/@fs/`` path lies in ``root`` or in the ``node_modules`` it uses."""
    allowed = [os.path.realpath(root)]
    modules = root / "node_modules"
    if modules.is_symlink():
        allowed.append(os.path.realpath(modules))
    real = os.path.realpath(file)
    return any(real == base or real.startswith(base.rstrip("/") + "/") for base in allowed)
