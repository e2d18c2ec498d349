#!/usr/bin/env bash
# Set up (once) and run the edge on embedded defaults: http://127.0.0.1:8080,
# workspace in ./workspace, no AWS and no GitHub needed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/edge ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e .
  touch .venv/.installed
fi
exec .venv/bin/edge serve "$@"
