"""``astro build`` in a thread's folder, with the same Node, dependencies and environment as its preview."""

from __future__ import annotations

import re
import time
from pathlib import Path

from preview.logs import LogTail
from preview.node import PreviewError, astro_install, check_engines, child_env
from preview.process import run_to_end
from preview.supervisor import PreviewSupervisor

BUILD_TIMEOUT = 600.0
_DIRECTORY = re.compile(r"\[build\] directory:\s*(?P<dir>\S.*?)\s*$")


def _output_dir(folder: Path, lines: list[str]) -> str:
    """The build's output folder as Astro reported it (relative to the project), else ``dist``."""
    for line in reversed(lines):
        found = _DIRECTORY.search(line)
        if found:
            reported = Path(found.group("dir"))
            try:
                return str(reported.relative_to(folder)) or "."
            except ValueError:
                return str(reported)
    return "dist"


async def build_site(supervisor: PreviewSupervisor, session_id: str, folder: Path) -> dict:
    """Run ``astro build``; the answer says whether it worked, how long it took and where the site is."""
    log = LogTail(supervisor.log_dir / f"{session_id}.build.log", max_lines=2000)
    started = time.monotonic()
    try:
        node, version = await supervisor.node_for(folder, log)
        await supervisor.deps.ensure(folder, node, version, log, lambda: None)
        astro = astro_install(folder)
        check_engines(astro, node, version)
        log.event(f"astro build (Astro {astro.version}, Node {version})")
        code = await run_to_end(
            [node, str(astro.entry), "build"],
            cwd=folder,
            env=child_env(supervisor.settings, node),
            log=log,
            timeout=BUILD_TIMEOUT,
        )
    except PreviewError as exc:
        log.close()
        return {"success": False, "error": str(exc), "durationSeconds": round(time.monotonic() - started, 2), "output": log.tail(60)}
    log.close()
    duration = round(time.monotonic() - started, 2)
    if code != 0:
        reason = f"timed out after {BUILD_TIMEOUT:g}s" if code is None else f"exited with code {code}"
        return {"success": False, "error": f"astro build {reason}", "durationSeconds": duration, "exitCode": code, "output": log.tail(60)}
    return {"success": True, "durationSeconds": duration, "outputDir": _output_dir(folder, log.tail(2000)), "exitCode": 0}
