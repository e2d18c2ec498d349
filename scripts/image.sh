#!/usr/bin/env bash
# Build the edge image from the repository's Dockerfile with podman, where the two official
# base images cannot be pulled (no image registry reachable; Debian, PyPI and npm are).
#
#   bash scripts/image.sh [TAG]        build TAG (default localhost/webordinary-edge:ci); prints it
#   bash scripts/image.sh standins     only make (or reuse) the two stand-in base images
#   bash scripts/image.sh standins-python   only the python one; prints its tag
#
# The stand-ins replace python:3.11-slim-bookworm and node:22-bookworm-slim through the
# Dockerfile's PYTHON_IMAGE/NODE_IMAGE build args (the official images stay the defaults):
#   python  Debian bookworm (debootstrap minbase) with Debian's Python 3.11, venv and pip,
#           `python` and `pip` on PATH as in the official image;
#   node    the python stand-in plus Node 22 at /usr/local/bin/node and npm at
#           /usr/local/lib/node_modules/npm (both as setup fetched them from npm into .cache).
# Both carry the CA certificates this machine added to its trust store (the folder
# update-ca-certificates reads), because outgoing TLS may be re-signed by a local CA, and
# NODE_EXTRA_CA_CERTS so Node and npm use them. A stand-in is reused while its recipe (the
# package list and STANDIN_REVISION below, the Node and npm, the local certificates) is
# unchanged: its tag carries their hash. Bump STANDIN_REVISION when changing how they are made.
#
# Needs root, podman, debootstrap and runc, and /etc/containers/containers.conf as
# scripts/setup.sh writes it (runc runtime, no default ulimits).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LOCAL_CA_DIR="${LOCAL_CA_DIR:-/usr/local/share/ca-certificates}"
STANDIN_REVISION=3
STANDIN_PACKAGES="python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
# --network host: RUN steps reach Debian, PyPI and npm the way the host does.
BUILD_FLAGS=(--format docker --network host)

log() { printf '[image] %s\n' "$*" >&2; }

node_binary() {
    local node
    node="$(readlink -f "$CACHE/bin/node22" 2>/dev/null)" || true
    [[ -x $node ]] || { log "no Node 22 in .cache/bin/node22: run scripts/setup.sh first"; return 1; }
    printf '%s\n' "$node"
}

# One hash over everything a stand-in is made from (contents only: the same in every checkout).
recipe_hash() {
    {
        printf '%s %s %s\n' "$STANDIN_REVISION" "$STANDIN_PACKAGES" "$MIRROR"
        cat "$(node_binary)" "$CACHE/npm/node_modules/npm/package.json" | sha256sum
        find "$LOCAL_CA_DIR" -type f -name '*.crt' -print0 2>/dev/null | sort -z | xargs -0r cat | sha256sum
    } | sha256sum | cut -c1-12
}

# What the official debian:bookworm-slim (under python:3.11-slim-bookworm) does, so sizes
# compare: no docs, man pages or translations, and apt keeps no downloaded packages.
slim() {
    local rootfs="$1"
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda,locale}/*
}

python_standin() {
    local tag="$1" rootfs
    if podman image exists "$tag"; then
        log "python stand-in: $tag (cached)"
        return
    fi
    log "python stand-in: debootstrap bookworm (about 2 minutes)"
    rootfs="$(mktemp -d /var/tmp/edge-standin.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs'" RETURN
    mkdir -p "$CACHE/debootstrap"
    debootstrap --variant=minbase --include="$STANDIN_PACKAGES" --cache-dir="$CACHE/debootstrap" \
        bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; return 1; }
    rm -f "$rootfs.log"
    if compgen -G "$LOCAL_CA_DIR/*.crt" >/dev/null; then
        cp "$LOCAL_CA_DIR"/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    slim "$rootfs"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    # The official image's pip is not "externally managed"; Debian's is, for the system Python only.
    rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
    tar -C "$rootfs" -c . | podman import --quiet \
        --change 'ENV LANG=C.UTF-8' --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["python3"]' - "$tag" >/dev/null
    log "python stand-in: $tag"
}

node_standin() {
    local tag="$1" base="$2" context
    if podman image exists "$tag"; then
        log "node stand-in: $tag (cached)"
        return
    fi
    log "node stand-in: Node 22 and npm from .cache"
    context="$(mktemp -d /var/tmp/edge-standin-node.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$context'" RETURN
    install -D -m 0755 "$(node_binary)" "$context/usr/local/bin/node"
    mkdir -p "$context/usr/local/lib/node_modules"
    cp -a "$CACHE/npm/node_modules/npm" "$context/usr/local/lib/node_modules/npm"
    podman build "${BUILD_FLAGS[@]}" -t "$tag" -f - "$context" >/dev/null <<EOF
FROM $base
COPY usr /usr
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
    && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
    && node --version && npm --version
EOF
    log "node stand-in: $tag"
}

standins() {
    local key
    key="$(recipe_hash)"
    PYTHON_STANDIN="localhost/edge-standin-python:$key"
    NODE_STANDIN="localhost/edge-standin-node:$key"
    python_standin "$PYTHON_STANDIN"
    node_standin "$NODE_STANDIN" "$PYTHON_STANDIN"
}

main() {
    local target="${1:-localhost/webordinary-edge:ci}" started=$SECONDS
    command -v podman >/dev/null || { log "podman is not installed: run scripts/setup.sh"; return 1; }
    if [[ $target == standins-python ]]; then
        PYTHON_STANDIN="localhost/edge-standin-python:$(recipe_hash)"
        python_standin "$PYTHON_STANDIN"
        printf '%s\n' "$PYTHON_STANDIN"
        return
    fi
    standins
    [[ $target == standins ]] && return
    log "building $target from the Dockerfile"
    podman build "${BUILD_FLAGS[@]}" \
        --build-arg "PYTHON_IMAGE=$PYTHON_STANDIN" --build-arg "NODE_IMAGE=$NODE_STANDIN" \
        -t "$target" "$ROOT" >&2
    log "built $target in $((SECONDS - started)) s"
    printf '%s\n' "$target"
}

main "$@"
