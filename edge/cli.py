"""The ``edge`` command: ``edge serve`` (also ``python -m edge``)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys

from edge import __version__
from edge.settings import Settings, SettingsError


def missing_prerequisites(*, need_npm: bool) -> list[str]:
    """One line per missing program, saying what to install (before anything imports GitPython, which
    fails with a traceback without git)."""
    missing = []
    if shutil.which("git") is None:
        missing.append("git is not installed; install it (Debian: apt-get install git) and run this again")
    if need_npm and shutil.which("npm") is None:
        missing.append("npm is not installed; install Node.js with npm (Debian: apt-get install npm) and run this again")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge", description="webordinary edge server")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the edge server (the default)")
    serve.add_argument("--host", help="address to listen on (EDGE_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (PORT)")
    demo = commands.add_parser("demo", help="try it locally: the example site, a thread and its live preview")
    demo.add_argument("--workspace", default="workspace-demo", help="demo folder (default ./workspace-demo)")
    demo.add_argument("--port", type=int, help="port to listen on (PORT, default 8080)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--site", help="the Astro site to start from (default examples/site)")
    demo.add_argument("--verbose", action="store_true", help="print the proxy log here (default: <workspace>/proxy.log)")
    doctor = commands.add_parser("doctor", help="check git, Node, npm, the workspace and the configuration")
    doctor.add_argument("--site", help="also check Node against this Astro site's node_modules/astro")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from pathlib import Path

        from edge import doctor as doctor_command

        return doctor_command.main(Path(args.site) if args.site else None, sys.stdout)

    missing = missing_prerequisites(need_npm=args.command == "demo")
    if missing:
        for message in missing:
            print(f"edge: {message}", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"edge: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        from pathlib import Path

        from edge import demo as demo_command

        site = Path(args.site) if args.site else demo_command.EXAMPLE_SITE
        workspace = Path(args.workspace)
        try:
            demo = demo_command.demo_settings(settings, workspace.absolute(), args.host, args.port or settings.port)
            return demo_command.main(workspace, site, demo, verbose=args.verbose)
        except (SettingsError, OSError) as exc:  # an open API beyond loopback, a port in use
            print(f"edge demo: {exc}", file=sys.stderr)
            return 2
    overrides = {k: v for k, v in (("host", args.__dict__.get("host")), ("port", args.__dict__.get("port"))) if v}
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)

    from edge.server import run

    try:
        run(settings)
    except SettingsError as exc:  # e.g. an open API beyond loopback (edge.auth.exposure_problem)
        print(f"edge: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0
