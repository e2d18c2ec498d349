#!/usr/bin/env bash
# Set up (once) and run the edge on embedded defaults: http://127.0.0.1:8080,
# workspace in ./workspace, no AWS and no GitHub needed.
#   bash scripts/run.sh           # edge serve
#   bash scripts/run.sh demo      # the example site, initialised and previewed
# Other arguments go to the edge command (`bash scripts/run.sh serve --port 9000`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/edge ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet -e .
  touch .venv/.installed
fi
if [ $# -eq 0 ]; then
  set -- serve
fi
exec .venv/bin/edge "$@"
