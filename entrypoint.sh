#!/usr/bin/env bash
# The container's entrypoint (run by tini): check the environment, configure git in
# $HOME, prepare WORKSPACE_PATH, then exec `edge serve` (or the command given).
#
# Everything is checked before anything is written, so a refused start leaves no
# half-written configuration. GITHUB_TOKEN is never printed and never written: the
# credential helper in ~/.gitconfig reads it from the environment each time git asks.
set -euo pipefail

# GitHub's token formats: ghp_ (classic), gho_/ghu_/ghs_/ghr_ (OAuth, user-to-server,
# server-to-server, refresh), github_pat_ (fine-grained), and the old 40-hex tokens.
# Kept identical to edge/doctor.py's GITHUB_TOKEN_SHAPE (tests/test_shipping.py checks both).
TOKEN_SHAPE='^(gh[pousr]_[A-Za-z0-9]{30,251}|github_pat_[A-Za-z0-9_]{30,244}|[0-9a-f]{40})$'
HOST_SHAPE='^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$'

# Runs in git's /bin/sh as `<helper> get|store|erase`. The single quotes are the point:
# $GITHUB_TOKEN is expanded when git runs the helper, never when this script writes it.
# shellcheck disable=SC2016
CREDENTIAL_HELPER='!f() { cat >/dev/null; test "$1" = get || exit 0; test -n "$GITHUB_TOKEN" || exit 0; printf "username=x-access-token\npassword=%s\n" "$GITHUB_TOKEN"; }; f'

die() {
    printf 'entrypoint: error: %s\n' "$*" >&2
    exit 64
}
warn() { printf 'entrypoint: warning: %s\n' "$*" >&2; }
info() { printf 'entrypoint: %s\n' "$*" >&2; }

is_true() {
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

check_token() {
    local token="${GITHUB_TOKEN-}"
    if [[ -z $token ]]; then
        if is_true "${EDGE_CONTAINER:-0}"; then
            die "GITHUB_TOKEN is not set. The container needs a GitHub token to clone and push the site's repository: pass it as a secret (ECS: secrets → GITHUB_TOKEN from Secrets Manager or SSM)."
        fi
        warn "GITHUB_TOKEN is not set: private https repositories cannot be cloned or pushed."
        return 0
    fi
    if [[ $token =~ [[:space:]] ]]; then
        die "GITHUB_TOKEN contains whitespace or a line break (a trailing newline from the secret store?). Store the token alone, without spaces or newlines."
    fi
    if ! [[ $token =~ $TOKEN_SHAPE ]]; then
        die "GITHUB_TOKEN does not look like a GitHub token (expected ghp_…, github_pat_…, gho_/ghu_/ghs_/ghr_… or 40 hex digits; ${#token} characters given, value not shown)."
    fi
}

# Optional (VALIDATE_GITHUB_TOKEN=1): ask GitHub whether it accepts the token. Bounded by
# VALIDATE_GITHUB_TOKEN_TIMEOUT (5 s) and only ever warns: GitHub being slow or down must not
# stop the edge. The token reaches python through the environment, never an argument.
live_check_token() {
    is_true "${VALIDATE_GITHUB_TOKEN:-0}" && [[ -n ${GITHUB_TOKEN-} ]] || return 0
    local budget="${VALIDATE_GITHUB_TOKEN_TIMEOUT:-5}" status
    [[ $budget =~ ^[0-9]+$ ]] || die "VALIDATE_GITHUB_TOKEN_TIMEOUT=$budget is not a whole number of seconds"
    status="$(
        EDGE_CHECK_TIMEOUT="$budget" timeout -k 1 "$budget" python3 -c '
import os, urllib.error, urllib.request
url = os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/") + "/user"
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + os.environ["GITHUB_TOKEN"], "User-Agent": "webordinary-edge"})
try:
    print(urllib.request.urlopen(request, timeout=float(os.environ["EDGE_CHECK_TIMEOUT"])).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception as exc:
    print(type(exc).__name__)
' 2>/dev/null
    )" || status="${status:-timeout}"
    case "$status" in
        200) info "GitHub accepts GITHUB_TOKEN." ;;
        401) warn "GitHub refused GITHUB_TOKEN (401): it is expired, revoked or mistyped. Starting anyway." ;;
        *) warn "could not check GITHUB_TOKEN with GitHub (${status:-no answer}) within ${budget}s. Starting anyway." ;;
    esac
}

allowed_hosts() {
    local raw="${GIT_ALLOWED_HOSTS:-github.com}" host
    local -a parts
    IFS=',' read -r -a parts <<<"$raw"
    for host in "${parts[@]}"; do
        host="${host//[[:space:]]/}"
        [[ -z $host ]] && continue
        [[ $host =~ $HOST_SHAPE ]] || die "GIT_ALLOWED_HOSTS: ${host@Q} is not a host name"
        printf '%s\n' "${host,,}"
    done
}

workspace_path() {
    local path="${WORKSPACE_PATH:-$PWD/workspace}"
    [[ $path == /* ]] || path="$PWD/$path"
    printf '%s\n' "${path%/}"
}

# Only the top folder: mkdir -p and a real write. Never chown/chmod -R: on EFS that would
# walk every clone and node_modules, and the folder's contents are not ours to change.
prepare_workspace() {
    local path="$1" probe
    if [[ -e $path && ! -d $path ]]; then
        die "WORKSPACE_PATH ($path) exists but is not a folder."
    fi
    mkdir -p -- "$path" 2>/dev/null || die "cannot create WORKSPACE_PATH ($path) as uid $(id -u): mount the volume there or make its parent writable."
    probe="$(mktemp "$path/.entrypoint-write-test.XXXXXX" 2>/dev/null)" \
        || die "WORKSPACE_PATH ($path) is not writable by uid $(id -u) gid $(id -g): give the volume (EFS access point) this uid/gid, or chown that one folder (not its contents)."
    rm -f -- "$probe"
}

# git's global config ($HOME/.gitconfig): identity, a credential helper per allowed host,
# and the workspace as a safe directory (git >= 2.46 also honours the "/*" entry; the edge's
# own git calls pass safe.directory themselves).
configure_git() {
    local workspace="$1" host
    shift
    [[ -n ${HOME-} && -d $HOME ]] || die "HOME (${HOME-unset}) is not a folder: git's global config lives there."
    {
        git config --global user.name "${GIT_USER_NAME:-webordinary edge}" \
            && git config --global user.email "${GIT_USER_EMAIL:-edge@webordinary.com}" \
            && { git config --global --unset-all safe.directory || [[ $? == 5 ]]; } \
            && git config --global --add safe.directory "$workspace" \
            && git config --global --add safe.directory "$workspace/*"
    } || die "cannot write git's global config ($HOME/.gitconfig): HOME must be writable."
    for host in "$@"; do
        git config --global --replace-all "credential.https://$host.helper" "$CREDENTIAL_HELPER" \
            || die "cannot write git's global config ($HOME/.gitconfig): HOME must be writable."
    done
}

main() {
    local workspace listed
    local -a hosts
    check_token
    listed="$(allowed_hosts)"
    hosts=()
    [[ -z $listed ]] || mapfile -t hosts <<<"$listed"
    workspace="$(workspace_path)"
    live_check_token
    prepare_workspace "$workspace"
    configure_git "$workspace" "${hosts[@]}"
    info "workspace $workspace ready; git configured for ${hosts[*]:-no host}"
    if (($# > 0)); then
        exec "$@"
    fi
    exec edge serve
}

main "$@"
