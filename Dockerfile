# syntax=docker/dockerfile:1
# codexgw: one image for every service (`twist codexgw-exec`, `twist codexgw-app`,
# `twist codexgw-executor`) and the `codexgw` command, with the pinned codex CLI.
#
#   docker build -t codexgw:0.1.0 .
#   docker run --rm codexgw:0.1.0 --help        # twist's help lists the codexgw plugins
#
# docker-compose.yml runs the production-shaped stack from this image; README.md explains it.

# --- Stage 1: the pinned codex CLI from npm (node and npm from Debian, needed only to install it).
FROM python:3.11-slim-bookworm AS codex
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN npm install --prefix /opt/codex --no-audit --no-fund --loglevel=error @openai/codex@0.169.0

# --- Stage 2: the runtime image.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# curl: the gateways' healthchecks, and copy_path's http transport on an executor (curl and tar);
# bash: the shell the agents' commands are given (`bash -lc`); procps: `ps` for the process tools.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl bash procps tar \
 && rm -rf /var/lib/apt/lists/*

COPY --from=codex /opt/codex /opt/codex

# The package with its exact pins. A regular install leaves the flat `twisted/plugins` directory out,
# so its module is copied into Twisted's plugin package, and the plugin cache is written now, while
# that directory is still writable.
COPY setup.cfg pyproject.toml constraints.txt README.md /tmp/src/
COPY codexgw /tmp/src/codexgw
COPY twisted /tmp/src/twisted
COPY tac /opt/codexgw/tac
RUN pip install -c /tmp/src/constraints.txt /tmp/src \
 && plugins="$(python -c 'import os, twisted.plugins as p; print(os.path.dirname(p.__file__))')" \
 && cp /tmp/src/twisted/plugins/codexgw_plugins.py "$plugins/" \
 && python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))' \
 && twist --help | grep -q codexgw-executor \
 && rm -rf /tmp/src

# Only the native codex binary is used; `codexgw.codexbin --check` fails the build unless it reports
# the pinned version.
RUN native="$(python -m codexgw.codexbin --check /opt/codex 0.169.0)" \
 && ln -s "$native" /usr/local/bin/codex \
 && codex --version

# A non-root user; /var/lib/codexgw holds the app gateway's CODEX_HOMEs and the executor's state
# (named volumes mounted there take this ownership on first use).
RUN groupadd --system --gid 10001 codexgw \
 && useradd --system --uid 10001 --gid codexgw --home-dir /home/codexgw --create-home \
        --shell /bin/bash codexgw \
 && install -d -o codexgw -g codexgw -m 0700 \
        /var/lib/codexgw /var/lib/codexgw/homes /var/lib/codexgw/executor /var/lib/codexgw/objects
USER codexgw
WORKDIR /var/lib/codexgw

EXPOSE 6060 8086
ENTRYPOINT ["twist"]
CMD ["--help"]
