"""File tools for the Bedrock executor, confined to one worktree.

Every path the model gives is resolved (following symlinks) and must stay
inside the worktree and outside ``.git``; anything else is a ToolError, which
the model receives as a failed tool result. Nothing here runs a command.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_READ = 200_000
MAX_WRITE = 1_000_000
MAX_LIST = 500
SKIP_DIRS = {".git", "node_modules", ".astro", "dist"}

READ_TOOLS = ("list_files", "read_file")
WRITE_TOOLS = ("write_file", "replace_in_file")


class ToolError(Exception):
    """A tool call the model must correct (bad path, missing file, text not found)."""


def safe_path(worktree: Path, raw: object) -> Path:
    """The resolved path of ``raw`` inside ``worktree``; ToolError for anything outside it."""
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise ToolError("path must be a non-empty relative path")
    if os.path.isabs(raw):
        raise ToolError(f"{raw!r} is an absolute path; use a path relative to the project folder")
    root = worktree.resolve()
    target = (root / raw).resolve()
    if target != root and not target.is_relative_to(root):
        raise ToolError(f"{raw!r} is outside the project folder")
    if ".git" in target.relative_to(root).parts:
        raise ToolError("the .git folder is not editable")
    return target


def _rel(worktree: Path, path: Path) -> str:
    return str(path.relative_to(worktree.resolve()))


def list_files(worktree: Path, args: dict) -> str:
    base = safe_path(worktree, args.get("path") or ".")
    if not base.is_dir():
        raise ToolError(f"{args.get('path')!r} is not a folder")
    found: list[str] = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            found.append(_rel(worktree, Path(folder) / name))
            if len(found) >= MAX_LIST:
                return "\n".join(found + [f"... (first {MAX_LIST} files)"])
    return "\n".join(found) or "(no files)"


def read_file(worktree: Path, args: dict) -> str:
    path = safe_path(worktree, args.get("path"))
    if not path.is_file():
        raise ToolError(f"{args.get('path')!r} is not a file")
    data = path.read_bytes()[:MAX_READ]
    return data.decode("utf-8", "replace")


def write_file(worktree: Path, args: dict) -> str:
    path = safe_path(worktree, args.get("path"))
    content = args.get("content")
    if not isinstance(content, str):
        raise ToolError("content must be a string")
    if len(content) > MAX_WRITE:
        raise ToolError(f"content larger than {MAX_WRITE} characters")
    if path.is_dir():
        raise ToolError(f"{args.get('path')!r} is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return f"wrote {_rel(worktree, path)} ({len(content)} characters)"


def replace_in_file(worktree: Path, args: dict) -> str:
    path = safe_path(worktree, args.get("path"))
    old, new = args.get("old_text"), args.get("new_text")
    if not isinstance(old, str) or not old or not isinstance(new, str):
        raise ToolError("old_text (non-empty) and new_text must be strings")
    if not path.is_file():
        raise ToolError(f"{args.get('path')!r} is not a file")
    text = path.read_text(encoding="utf-8")
    count = text.count(old)
    if count != 1:
        raise ToolError(f"old_text occurs {count} times in {args.get('path')!r}; it must occur exactly once")
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return f"replaced text in {_rel(worktree, path)}"


HANDLERS = {
    "list_files": list_files,
    "read_file": read_file,
    "write_file": write_file,
    "replace_in_file": replace_in_file,
}

_PATH = {"path": {"type": "string", "description": "a path relative to the project folder"}}
SPECS = {
    "list_files": ("List the files under a folder of the project (default: all).", {"path": _PATH["path"]}, []),
    "read_file": ("Read a text file of the project.", _PATH, ["path"]),
    "write_file": (
        "Create or overwrite a text file of the project.",
        {**_PATH, "content": {"type": "string"}},
        ["path", "content"],
    ),
    "replace_in_file": (
        "Replace one exact occurrence of old_text with new_text in a file.",
        {**_PATH, "old_text": {"type": "string"}, "new_text": {"type": "string"}},
        ["path", "old_text", "new_text"],
    ),
}


def tool_config(names: tuple[str, ...]) -> dict:
    """The Converse API ``toolConfig`` offering ``names``."""
    tools = []
    for name in names:
        description, properties, required = SPECS[name]
        schema = {"type": "object", "properties": properties, "required": required}
        tools.append({"toolSpec": {"name": name, "description": description, "inputSchema": {"json": schema}}})
    return {"tools": tools}


def call(worktree: Path, name: str, args: object, allowed: tuple[str, ...]) -> str:
    """Run one tool call; ToolError when it is not allowed or fails."""
    if name not in allowed:
        raise ToolError(f"tool {name!r} is not available in this run")
    if not isinstance(args, dict):
        raise ToolError("tool input must be an object")
    try:
        return HANDLERS[name](worktree, args)
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"{type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
