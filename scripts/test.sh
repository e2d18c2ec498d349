#!/usr/bin/env bash
# The test command: install what is missing (scripts/setup.sh), then run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_astro_host.py -x`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/pytest -q -ra -p no:cacheprovider "$@"
