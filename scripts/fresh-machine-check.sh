#!/usr/bin/env bash
# Does the test command pass on a fresh Debian bookworm machine? Runs `bash scripts/test.sh`
# in a throwaway podman container that holds only Debian with python3 and a copy of this
# checkout (tracked and untracked files, nothing git ignores: no .venv, .cache, node_modules).
#
#   bash scripts/fresh-machine-check.sh [pytest arguments]
#
# Takes 8 minutes on two quiet cores, 17 on busy ones (setup 6 of them). Not part of the test command.
#
# The machine is the python stand-in of scripts/image.sh (Debian bookworm from debootstrap,
# with this machine's local CA certificates) with pip, venv (ensurepip), setuptools, wheel and
# the `python` alias removed, so setup must install what a fresh machine lacks. The container shares the host's network
# (the tests listen on loopback only). tests/test_container.py is left out: it builds and runs
# the image with podman, which does not run inside this container; the host's CI runs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME="edge-fresh-machine-$$"

log() { printf '[fresh-machine] %s\n' "$*" >&2; }

base="$(bash "$ROOT/scripts/image.sh" standins-python)"
log "machine: $base with python3 only; checkout copied from $ROOT"
# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() { podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

started=$SECONDS
status=0
# shellcheck disable=SC2016  # expanded inside the container
(cd "$ROOT" && git ls-files --cached --others --exclude-standard -z | tar --null -T - -c) \
    | podman run -i --name "$NAME" --network host --shm-size 1g \
        --env "NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt" \
        "$base" bash -euo pipefail -c '
            export DEBIAN_FRONTEND=noninteractive
            apt-get purge -y -qq python3-pip python3-venv python3.11-venv python-is-python3 python3-pip-whl \
                python3-setuptools-whl python3-setuptools python3-wheel >/dev/null 2>&1
            apt-get autoremove --purge -y -qq >/dev/null 2>&1
            if python3 -c "import ensurepip" 2>/dev/null; then echo "venv still installed" >&2; exit 1; fi
            mkdir /src && tar -x -C /src && cd /src
            exec bash scripts/test.sh -m "not container" "$@"
        ' fresh-machine "$@" || status=$?
log "test command ended with $status after $((SECONDS - started)) s"
exit "$status"
