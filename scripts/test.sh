#!/usr/bin/env bash
# The test command: install what is missing (scripts/setup.sh), then run the whole suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_astro_host.py -x`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# The Node 20 and 22 that setup installed come first (whatever node the machine has), and a
# test missing something setup installs fails rather than skips (tests/fixtures_astro.require).
export PATH="$ROOT/.cache/bin:$PATH"
export EDGE_TESTS_STRICT=1
exec .venv/bin/pytest -q -ra -p no:cacheprovider "$@"
