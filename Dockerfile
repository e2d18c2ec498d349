# webordinary edge: one container per client (ECS Fargate), workspaces on EFS at /workspace.
#
# Stages:
#   node     the official Node 22 image; only its node binary and npm are copied
#            (Astro 6/7 need Node >= 22.12; Debian bookworm's own nodejs is 18).
#   claude   Claude Code (the `claude-code` executor), pinned; npm's postinstall puts the
#            native linux binary at bin/claude.exe, and only that package folder is copied.
#   builder  `pip install .` into /opt/venv (no pip, no build files in the result).
#   final    Python 3.11 (the version CI tests), git, tini, Node 22, the venv; user edge (uid 1000).
# Both Python and Node images are Debian bookworm, so the node binary finds the same glibc/libstdc++.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS node

FROM node AS claude
ARG CLAUDE_CODE_VERSION=2.1.332
RUN npm install --global --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
    && /usr/local/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe --version

FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
# A venv without pip: the base image's pip installs into it (--python), so neither pip nor
# setuptools end up in the final image.
RUN python -m venv --without-pip /opt/venv
COPY pyproject.toml README.md ./
COPY core ./core
COPY edge ./edge
COPY control ./control
COPY preview ./preview
COPY core ./core
RUN pip --python /opt/venv/bin/python install --no-cache-dir --disable-pip-version-check .

FROM ${PYTHON_IMAGE}
# git: the control API's clones and worktrees; tini: PID 1 that forwards signals and reaps;
# util-linux (setpriv --pdeathsig: dev servers die with the edge) is already in the base image,
# listed so that stays true.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --create-home --home-dir /home/edge --shell /usr/sbin/nologin edge \
    && install -d -o edge -g edge -m 0755 /workspace

COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
COPY --from=claude /usr/local/lib/node_modules/@anthropic-ai/claude-code /usr/local/lib/node_modules/@anthropic-ai/claude-code
RUN ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
    && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
    && ln -sf ../lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe /usr/local/bin/claude \
    && node --version && npm --version && claude --version

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 entrypoint.sh /app/entrypoint.sh

ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/edge \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGE_CONTAINER=1 \
    EDGE_WORKERS=auto \
    EDGE_HOST=0.0.0.0 \
    PORT=8080 \
    WORKSPACE_PATH=/workspace \
    NODE_BINARY=/usr/local/bin/node \
    CLAUDE_CLI=/usr/local/bin/claude \
    DISABLE_AUTOUPDATER=1 \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false

USER 1000:1000
WORKDIR /app
EXPOSE 8080

# /health answers any Host; a loopback request needs neither curl nor the API token.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=4)"]

ENTRYPOINT ["tini", "--", "/app/entrypoint.sh"]
