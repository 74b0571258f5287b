#!/usr/bin/env bash
# Install the two checkers that `make test` runs on deploy/ and docs/, when they are missing:
#  - promtool (Debian's `prometheus` package) for deploy/prometheus/alerts*.yaml;
#  - the npm @asyncapi/parser, pinned by tools/asyncapi/package-lock.json, for docs/asyncapi.yaml.
# Idempotent, and offline-safe once both are there. The prometheus package would start a
# Prometheus server on port 9090 (the worker's METRICS_PORT default): a policy-rc.d that
# denies service starts is in place for the install, and the service is disabled after it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Under CI a tool that cannot be installed is an error; elsewhere the tests that need it skip.
missing() {
  echo "$1" >&2
  if [ -n "${CI:-}" ]; then exit 1; fi
}

install_promtool() {
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && added_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    >/dev/null
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if [ -n "$added_policy" ]; then rm -f "$policy"; fi
  command -v promtool >/dev/null
}

if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    missing "promtool is missing: install Debian's prometheus package (or a Prometheus release)"
  else
    install_promtool
  fi
fi

if [ ! -d tools/asyncapi/node_modules/@asyncapi/parser ]; then
  if ! command -v npm >/dev/null 2>&1; then
    missing "npm is missing: install Node.js 18+ to check docs/asyncapi.yaml"
  else
    npm ci --prefix tools/asyncapi --no-audit --no-fund --loglevel=error
  fi
fi
