#!/usr/bin/env bash
# Install everything the tests and the benchmark need, on a fresh Debian machine as root.
#
# Idempotent: each step checks whether its result already exists and skips if so,
# so a second run takes about a second. Everything the project installs lives in
# the repository (.venv/ and .cache/, both ignored by git), except the Debian
# packages. Only package registries are used: Debian (apt), PyPI (pip), npm.
#
#   .venv/                          Python venv with `pip install -e '.[test]'`
#   .cache/astro/5/node_modules     Astro 5 for Node 20, from examples/site/package-lock.json
#   .cache/astro/7/node_modules     Astro 7 (needs Node >= 22.12)
#   .cache/node20/, .cache/node22/  Node 20 and 22 from the npm packages node-linux-<arch>
#                                   (Debian's nodejs is 18: only its npm is used, to fetch these)
#   .cache/chp/                     configurable-http-proxy, for bench/proxy_bench.py
#   .cache/node18/                  Node 18.20.4, the version Debian bookworm ships (a test's "fresh Debian")
#   .cache/bin/node, node22         links to the Node 20 and 22 binaries (scripts/test.sh puts
#                                   .cache/bin first on PATH, so the tests use these)
#   .cache/bin/configurable-http-proxy
#   .cache/claude/                  Claude Code (@anthropic-ai/claude-code, pinned; needs Node >= 22,
#   .cache/bin/claude               so npm runs its postinstall with Node 22), the CLI the tests run
#   .cache/npm/, .cache/bin/npm     npm itself from npm: Debian's npm only runs on Debian's
#                                   Node (its modules live in /usr/share/nodejs), so the previews'
#                                   npm ci under Node 20/22 needs a self-contained one
#   podman, debootstrap, runc       for the image test (scripts/image.sh builds the Dockerfile with
#                                   podman from local stand-ins for its base images), with
#                                   /etc/containers/containers.conf (runc, no default ulimits)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
PYTHON="${PYTHON:-python3}"
ASTRO7_VERSION="7.3.5"
NODE20_VERSION="20.20.2"
NODE22_VERSION="22.23.5"
NODE18_DEBIAN_VERSION="18.20.4"  # Debian bookworm's nodejs: too old for Astro 5.18 (tests/test_preview_nodes.py)
CHP_VERSION="5.3.0"
CLAUDE_CODE_VERSION="2.1.332"  # keep equal to the Dockerfile's
NPM_VERSION="10.9.8"
NPM_FLAGS=(--no-audit --no-fund --loglevel=error)

log() { printf '[setup] %s\n' "$*" >&2; }

# A stamp holds what a step was done for (a version or a file hash); a step
# whose stamp matches is skipped, and a step that failed half-way has none.
stamp_matches() { [[ -f "$1" && "$(cat "$1")" == "$2" ]]; }

apt_packages() {
    local missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v git >/dev/null || missing+=(git)
    command -v wrk >/dev/null || missing+=(wrk)
    [[ -x /usr/sbin/nginx ]] || missing+=(nginx)  # the benchmarks' reference proxy and static upstream (bench/nginx.py)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    command -v "$PYTHON" >/dev/null || missing+=(python3)
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    if ((${#missing[@]} == 0)); then
        log "Debian packages: present"
        return
    fi
    log "Debian packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ " ${missing[*]} " == *" nginx "* ]]; then
        /usr/sbin/nginx -s quit 2>/dev/null || true  # the package may start a daemon on port 80: the benchmarks start their own
    fi
}

# Debian packages a fresh bookworm machine lacks beyond those above: libatomic1 for the
# Node binary inside Playwright's driver (every Chromium test needs it).
fresh_machine_packages() {
    if ldconfig -p | grep -q 'libatomic\.so\.1 '; then
        log "libatomic1: present"
        return
    fi
    log "libatomic1: installing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends libatomic1 >/dev/null
}

# podman builds and runs the image in tests/test_container.py. crun fails on hybrid cgroups
# here and the machine may lack CAP_SYS_RESOURCE, so podman uses runc and no default ulimits
# (the file is written whole, only when it differs).
container_tools() {
    local conf=/etc/containers/containers.conf want missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v runc >/dev/null || missing+=(runc)
    if ((${#missing[@]} > 0)); then
        log "container tools: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "container tools: present"
    fi
    want="$(printf '%s\n' '# written by webordinary edge scripts/setup.sh' '[containers]' 'default_ulimits = []' '' '[engine]' 'runtime = "runc"')"
    if [[ ! -f $conf || "$(cat "$conf")" != "$want" ]]; then
        mkdir -p "$(dirname "$conf")"
        printf '%s\n' "$want" >"$conf"
        log "container tools: wrote $conf"
    fi
}

python_venv() {
    local want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [[ -x "$ROOT/.venv/bin/python" ]] && stamp_matches "$ROOT/.venv/.setup-stamp" "$want"; then
        log "Python venv: up to date"
        return
    fi
    log "Python venv: installing .[test] into .venv"
    [[ -x "$ROOT/.venv/bin/python" ]] || "$PYTHON" -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check -e "${ROOT}[test]"
    printf '%s' "$want" >"$ROOT/.venv/.setup-stamp"
}

astro5() {
    local dir="$CACHE/astro/5" want
    want="$(cat "$ROOT/examples/site/package.json" "$ROOT/examples/site/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if stamp_matches "$dir/.setup-stamp" "$want"; then
        log "Astro 5: up to date"
        return
    fi
    log "Astro 5: npm ci from examples/site/package-lock.json"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$ROOT/examples/site/package.json" "$ROOT/examples/site/package-lock.json" "$dir/"
    (cd "$dir" && npm ci "${NPM_FLAGS[@]}")
    printf '%s' "$want" >"$dir/.setup-stamp"
}

# Install one npm package (at an exact version) into its own folder; a fourth argument is the
# Node binary that runs npm (npm skips optional dependencies whose engines its Node does not meet).
npm_package() {
    local label="$1" dir="$2" spec="$3" node="${4-}"
    local -a npm=(npm)
    [[ -z $node ]] || npm=("$node" "$CACHE/npm/node_modules/npm/bin/npm-cli.js")
    if stamp_matches "$dir/.setup-stamp" "$spec${node:+ (node $("$node" --version))}"; then
        log "$label: up to date"
        return
    fi
    log "$label: npm install $spec${node:+ with $node}"
    rm -rf "$dir"
    mkdir -p "$dir"
    "${npm[@]}" install --prefix "$dir" "${NPM_FLAGS[@]}" "$spec"
    printf '%s' "$spec${node:+ (node $("$node" --version))}" >"$dir/.setup-stamp"
}

node_arch() {
    case "$(uname -m)" in
        x86_64) echo x64 ;;
        aarch64 | arm64) echo arm64 ;;
        *) echo "unsupported machine $(uname -m) for node-linux-*" >&2; return 1 ;;
    esac
}

main() {
    local started=$SECONDS arch
    apt_packages
    fresh_machine_packages
    container_tools
    python_venv
    astro5
    arch="$(node_arch)"
    npm_package "Node 20" "$CACHE/node20" "node-linux-$arch@$NODE20_VERSION"
    npm_package "Node 22" "$CACHE/node22" "node-linux-$arch@$NODE22_VERSION"
    npm_package "Node 18 (Debian's)" "$CACHE/node18" "node-linux-$arch@$NODE18_DEBIAN_VERSION"
    npm_package "npm" "$CACHE/npm" "npm@$NPM_VERSION"
    # Astro 7 needs Node 22: installed by it, so rolldown's native binding is not skipped.
    npm_package "Astro 7" "$CACHE/astro/7" "astro@$ASTRO7_VERSION" \
        "$CACHE/node22/node_modules/node-linux-$arch/bin/node"
    npm_package "configurable-http-proxy" "$CACHE/chp" "configurable-http-proxy@$CHP_VERSION"
    # Claude Code's engines say Node >= 22: its postinstall (which copies the native binary) runs on Node 22.
    npm_package "Claude Code" "$CACHE/claude" "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" \
        "$CACHE/node22/node_modules/node-linux-$arch/bin/node"
    mkdir -p "$CACHE/bin"
    ln -sfn "../npm/node_modules/npm/bin/npm-cli.js" "$CACHE/bin/npm"
    ln -sfn "../npm/node_modules/npm/bin/npx-cli.js" "$CACHE/bin/npx"
    ln -sfn "../node20/node_modules/node-linux-$arch/bin/node" "$CACHE/bin/node"
    ln -sfn "../node22/node_modules/node-linux-$arch/bin/node" "$CACHE/bin/node22"
    ln -sfn "../node18/node_modules/node-linux-$arch/bin/node" "$CACHE/bin/node18"
    ln -sfn "../chp/node_modules/.bin/configurable-http-proxy" "$CACHE/bin/configurable-http-proxy"
    ln -sfn "../claude/node_modules/.bin/claude" "$CACHE/bin/claude"
    "$CACHE/bin/node" --version >/dev/null
    "$CACHE/bin/node22" --version >/dev/null
    "$CACHE/bin/claude" --version >/dev/null
    log "done in $((SECONDS - started)) s"
}

main "$@"
