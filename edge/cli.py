"""The ``edge`` command: ``edge serve`` (also ``python -m edge``)."""

from __future__ import annotations

import argparse
import logging
import sys

from edge import __version__
from edge.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge", description="webordinary edge server")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the edge server (the default)")
    serve.add_argument("--host", help="address to listen on (EDGE_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (PORT)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"edge: configuration error: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.__dict__.get("host")), ("port", args.__dict__.get("port"))) if v}
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)

    from edge.server import run

    run(settings)
    return 0
